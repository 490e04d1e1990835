"""The built-in offline guidance prior (issue 7).

* ``colors``     colour vocabulary, prompt parsing, hue measures;
* ``objects``    parametric objects from closed primitives + prompt words;
* ``mannequin``  a capsule stand-in body (tests / missing body asset);
* ``placement``  rules putting an object against (not inside) the body;
* ``scenes``     captioned human / object / interaction / head renders;
* ``denoiser``   the caption-conditioned closed-form denoiser (backend
  "builtin" of ``guidance/core.py``);
* ``assets``     deterministic build, shipping and caching of the image bank.
"""
