"""The built-in offline guidance prior's bank builder (docs/prior.md).

* ``objects``    parametric objects from closed primitives + prompt words;
* ``mannequin``  a capsule stand-in body (tests / missing body asset);
* ``placement``  rules putting an object against (not inside) the body;
* ``scenes``     captioned human / object / interaction / head renders;
* ``assets``     deterministic build, shipping and caching of the image bank.

The prior's caption vocabulary is ``guidance/captions.py`` and its
closed-form denoiser ``guidance/builtin.py`` (backend "builtin" of
``guidance/core.py``).
"""
