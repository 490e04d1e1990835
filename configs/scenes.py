"""The eleven scene presets of the official release, as one table.

Each row holds the facts of one scene config of the official release
(github.com/sisidai/InterFusion at 45fe45d,
``InterGen/configs/interfusion-if/<name>.yaml``); ``configs/hoi.py`` applies a
row on top of the ``paper`` variant, so every preset runs by name::

    python -m interfusion_jax.train --config=configs/hoi.py:riding_a_bike --workdir=runs/bike

Row keys (plain Python values; this module imports nothing, so a sweep
generator can read it directly):

* ``human``, ``object``, ``interaction``: T_H, T_O, T_I (config.prompt.*), the
  official prompts without the "a photo of" prefix and the ", 8K, HD" suffix
  that ``guidance.prompts`` adds back;
* ``pose_query``: the text the anchor pose is retrieved with (config.pose.query;
  "" = the interaction), where the release's pose path names another
  interaction than its prompt;
* ``pose_rank``: the rank N of the official anchor file ``top_N.npy`` among
  the top-k retrieved poses (config.pose.rank with config.pose.choose "rank");
* ``aug_rot``, ``aug_trans``: config.body.aug_rot / aug_trans;
* ``distance_range``: the training camera distance range (config.camera.distance_range);
* ``shape_weights``: the lambda2 levels (w0, w1, w2) (config.loss.shape_weights);
* ``lines``: the release file's line of each fact (for docs/faithfulness.md):
  keys distance_range, pose_rank, aug (0 = not set: both False), object,
  human, interaction, head, shape_weights.

The preset name is the release file's name. One scene's name and its
interaction prompt differ in the release: ``pushing_a_shopping_cart.yaml``
prompts "carrying a shopping cart" (line 67) but poses with
``PoseGen/exp/poses/pushing_a_shopping_cart/top_1.npy`` (line 17); the table
keeps the prompt the release trains with and retrieves the pose with
"pushing a shopping cart" (``pose_query``).
"""

RELEASE = "github.com/sisidai/InterFusion@45fe45d"
CONFIG_DIR = "InterGen/configs/interfusion-if"

_W_DEFAULT = (0.001, 0.01, 0.1)
_W_STRONG = (0.01, 0.1, 0.1)
_NEAR = (2.5, 3.0)


def _row(human, obj, interaction, pose_rank, *, pose_query="", aug_rot=False, aug_trans=False,
         distance_range=_NEAR, shape_weights=_W_DEFAULT, lines):
  return dict(human=human, object=obj, interaction=interaction, pose_rank=pose_rank,
              pose_query=pose_query, aug_rot=aug_rot, aug_trans=aug_trans,
              distance_range=distance_range, shape_weights=shape_weights, lines=lines)


def _lines(distance, pose, aug, first_prompt, shape_weights):
  return dict(distance_range=distance, pose_rank=pose, aug=aug, object=first_prompt,
              human=first_prompt + 3, interaction=first_prompt + 6, head=first_prompt + 9,
              shape_weights=shape_weights)


SCENES = {
    "riding_a_bike": _row(
        "a man with a full beard wearing a flannel shirt", "a bike", "riding a bike", 0,
        lines=_lines(10, 17, 0, 61, 92)),
    "riding_a_horse": _row(
        "a man in a paisley waistcoat and bowler hat", "a horse", "riding a horse", 1,
        lines=_lines(10, 18, 0, 62, 93)),
    "riding_a_motorcycle": _row(
        "a man with blond hair wearing a brown leather jacket", "a motorcycle",
        "riding a motorcycle", 4, lines=_lines(10, 17, 0, 61, 92)),
    "sitting_on_a_chair": _row(
        "a person in a military uniform", "a chair", "sitting on a chair", 3, aug_rot=True,
        lines=_lines(10, 17, 19, 61, 92)),
    "sitting_on_a_sofa": _row(
        "an elderly man wearing a beige suit", "a sofa", "sitting on a sofa", 3, aug_rot=True,
        lines=_lines(10, 17, 19, 61, 92)),
    "playing_the_guitar": _row(
        "a man in a quilted gilet and moleskin trousers", "a guitar", "playing the guitar", 1,
        lines=_lines(10, 18, 0, 62, 93)),
    "playing_the_saxophone": _row(
        "a man in a velvet smoking jacket and silk pajama pants", "a saxophone",
        "playing the saxophone", 2, shape_weights=_W_STRONG, lines=_lines(10, 17, 0, 61, 92)),
    "reading_a_laptop": _row(
        "a security guard", "a laptop", "reading a laptop", 0, distance_range=(2.0, 2.7),
        lines=_lines(11, 18, 0, 62, 93)),
    "carrying_a_backpack": _row(
        "a person in a fleece pullover and hiking pants", "a backpack", "carrying a backpack", 4,
        shape_weights=_W_STRONG, lines=_lines(10, 17, 0, 61, 92)),
    "jumping_a_skateboard": _row(
        "a person in a cropped hoodie and bike shorts", "a skateboard", "jumping a skateboard", 1,
        aug_trans=True, shape_weights=_W_STRONG, lines=_lines(10, 17, 20, 61, 92)),
    "pushing_a_shopping_cart": _row(
        "a man in a puffer jacket and wool beanie", "a shopping cart",
        "carrying a shopping cart", 1, pose_query="pushing a shopping cart",
        lines=_lines(10, 17, 0, 61, 92)),
}
