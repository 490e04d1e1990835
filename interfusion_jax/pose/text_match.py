"""Weight-free text similarity for the built-in pose retrieval.

TF-IDF (scikit-learn) over normalised tokens: lower-case words, a small lemma
table (irregular verbs and plurals) plus suffix stripping, and a synonym table
mapping near-synonyms to one canonical token ("bicycle" -> "bike"). Stop words
and person words ("a man", "someone") are dropped. Fully deterministic.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_STOP = frozenset("""
a an the of on in at to with from into onto by for and or while his her their
its my your our is are was were be being been this that some very big small
heavy large little new old red blue green black white yellow brown wooden
man woman person someone somebody guy girl boy lady gentleman kid child people
he she they rendered 3d photo picture image full body who which up down
""".split())

# Irregular forms and words the suffix stripper would mangle.
_LEMMA = {
    "rode": "ride", "ridden": "ride", "riding": "ride", "rides": "ride",
    "sat": "sit", "sitting": "sit", "seated": "sit", "sits": "sit",
    "lying": "lie", "lay": "lie", "laying": "lie", "lies": "lie",
    "held": "hold", "holding": "hold", "carried": "carry", "carrying": "carry",
    "carries": "carry", "threw": "throw", "thrown": "throw", "throwing": "throw",
    "swung": "swing", "swinging": "swing", "running": "run", "ran": "run",
    "swimming": "swim", "drank": "drink", "drunk": "drink", "ate": "eat",
    "eating": "eat", "read": "read", "reading": "read", "kicking": "kick",
    "typing": "type", "types": "type", "typed": "type", "playing": "play",
    "lifting": "lift", "pushing": "push", "pulling": "pull", "talking": "talk",
    "drinking": "drink", "walking": "walk", "skating": "skate",
    "surfing": "surf", "skiing": "ski", "cycling": "cycle", "biking": "bike",
    "driving": "drive", "drove": "drive", "driven": "drive",
    "sleeping": "sleep", "slept": "sleep", "relaxing": "relax",
    "resting": "rest", "hugging": "hug", "hugged": "hug",
    "waving": "greet", "hello": "greet", "dancing": "dance", "jumping": "jump", "climbing": "climb",
    "fishing": "fish", "cooking": "cook", "strumming": "strum",
    "shooting": "shoot", "shot": "shoot", "boxes": "box", "glasses": "glass",
    "benches": "bench", "couches": "couch", "dogs": "dog", "balls": "ball",
    "batting": "bat", "hitting": "hit", "bicycles": "bike", "using": "use",
    "phoning": "phone", "texting": "text", "calling": "call", "chatting": "chat",
    "speaking": "speak",
    "sipping": "sip", "pedaling": "pedal", "pedalling": "pedal",
    "taking": "take", "took": "take", "making": "make", "writing": "write",
    "wrote": "write", "knelt": "kneel", "kneeling": "kneel",
    "squatting": "squat", "crouching": "crouch", "leaning": "lean",
    "strolling": "walk", "jogging": "run", "sprinting": "run",
    "people": "person", "men": "man", "women": "woman", "children": "child",
    "shelves": "shelf", "knives": "knife", "leaves": "leaf",
    "dishes": "dish", "watches": "watch", "grass": "grass", "bus": "bus",
    "chess": "chess", "glass": "glass", "tennis": "tennis", "dress": "dress",
}

# Near-synonyms -> canonical token (applied after lemmatisation).
_SYNONYM = {
    "bicycle": "bike", "cycle": "bike", "cyclist": "bike", "bmx": "bike",
    "motorbike": "motorcycle", "moped": "motorcycle", "harley": "motorcycle",
    "couch": "sofa", "settee": "sofa", "armchair": "sofa", "loveseat": "sofa",
    "seat": "chair", "stool": "chair", "pony": "horse", "stallion": "horse",
    "mare": "horse", "saddle": "horse", "crate": "box", "carton": "box",
    "package": "box", "parcel": "box", "chest": "box", "cardboard": "box",
    "fiddle": "violin", "viola": "violin", "uke": "guitar", "ukulele": "guitar",
    "strum": "guitar", "novel": "book", "magazine": "book",
    "newspaper": "book", "notebook": "laptop", "computer": "laptop",
    "pc": "laptop", "macbook": "laptop", "mattress": "bed", "bunk": "bed",
    "sleep": "lie", "nap": "lie", "trolley": "cart", "pram": "cart",
    "stroller": "cart", "wheelbarrow": "cart", "buggy": "cart",
    "football": "ball", "soccer": "ball", "volleyball": "ball",
    "hurl": "throw", "toss": "throw", "pitch": "throw", "fling": "throw",
    "racquet": "racket", "tennis": "racket", "badminton": "racket",
    "skate": "skateboard", "longboard": "skateboard",
    "surfboard": "surf", "parasol": "umbrella",
    "cellphone": "phone", "smartphone": "phone", "iphone": "phone",
    "mobile": "phone", "telephone": "phone", "call": "phone",
    "mug": "cup", "teacup": "cup", "coffee": "cup", "tea": "cup",
    "sip": "drink", "puppy": "dog", "leash": "dog", "hound": "dog",
    "doggy": "dog", "raise": "lift", "pick": "lift", "hoist": "lift",
    "bat": "bat", "baseball": "bat", "cricket": "bat",
    "tote": "carry", "haul": "carry", "lug": "carry", "bring": "carry",
    "chat": "talk", "speak": "talk", "converse": "talk", "shove": "push", "drag": "pull", "tug": "pull", "grab": "hold",
    "grip": "hold", "clutch": "hold", "cradle": "hold",
    "keyboard": "piano", "synthesizer": "piano", "drum": "drums",
    "drumkit": "drums", "cello": "cello", "sax": "saxophone",
    "jog": "run", "sprint": "run", "stroll": "walk", "hike": "walk",
    "snowboard": "surf", "kayak": "row", "canoe": "row", "paddle": "row",
    "auto": "car", "truck": "car", "van": "car", "automobile": "car",
    "rifle": "bow", "gun": "bow", "arrow": "bow", "archer": "bow",
    "broom": "sweep", "mop": "sweep", "vacuum": "sweep", "rake": "sweep",
    "spade": "shovel", "dig": "shovel", "axe": "hammer", "mallet": "hammer",
    "pray": "kneel", "crouch": "squat", "photograph": "camera",
    "selfie": "camera", "snap": "camera", "text": "phone",
    "placard": "sign", "poster": "sign", "banner": "sign",
    "basketball": "basketball", "hoop": "basketball", "dunk": "basketball",
    "frisbee": "throw", "golf": "golf", "club": "golf", "rod": "fish",
    "ladder": "climb", "sofabed": "bed", "armchairs": "sofa",
}

_SUFFIXES = (("ies", "y"), ("ing", ""), ("es", ""), ("ed", ""), ("s", ""))


def _strip_suffix(w: str) -> str:
  for suf, rep in _SUFFIXES:
    if w.endswith(suf) and len(w) - len(suf) >= 3:
      stem = w[: len(w) - len(suf)] + rep
      if suf == "ing" and len(stem) >= 2 and stem[-1] == stem[-2]:
        stem = stem[:-1]  # "running" -> "run" (if not in the lemma table)
      if suf == "es" and not stem.endswith(("sh", "ch", "x", "s", "z")):
        stem = w[:-1]  # "bikes" -> "bike", not "bik"
      return stem
  return w


def normalize_token(word: str) -> str:
  """One word -> its canonical token ('" returns "" for a stop word)."""
  w = word.lower()
  if w in _STOP:
    return ""
  w = _LEMMA.get(w, None) or _strip_suffix(w)
  w = _SYNONYM.get(w, w)
  return "" if w in _STOP else w


def tokenize(text: str) -> list[str]:
  """Text -> canonical tokens (stop words removed)."""
  words = re.findall(r"[a-z0-9]+", text.lower().replace("-", " "))
  return [t for t in (normalize_token(w) for w in words) if t]


class EmptyTextError(ValueError):
  """A query or label contains no usable words."""


def _analyzer(text: str) -> list[str]:
  toks = tokenize(text)
  return toks + [f"{a}_{b}" for a, b in zip(toks, toks[1:])]


def similarity(query: str, documents: Sequence[str]) -> np.ndarray:
  """TF-IDF cosine similarity between a query and documents.

  Args:
    query: free text, e.g. "a man riding a bicycle".
    documents: N texts (e.g. each library pose's phrases joined by ". ").

  Returns:
    [N] float64 similarities in [0, 1].

  Raises:
    EmptyTextError: if the query has no usable words.
  """
  if not query or not query.strip():
    raise EmptyTextError(
        "The interaction text is empty; give one such as 'riding a bike' "
        "(--text or config.prompt.interaction).")
  if not tokenize(query):
    raise EmptyTextError(
        f"The interaction text {query!r} has no content words after removing "
        "stop words; describe the interaction, e.g. 'sitting on a chair'.")
  # Imported here: scikit-learn (and the scipy.stats it loads) costs every start
  # of a command that imports pose/ and only the built-in retrieval needs it.
  from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=import-outside-toplevel
  vec = TfidfVectorizer(analyzer=_analyzer, sublinear_tf=True, norm="l2")
  docs = vec.fit_transform(list(documents))
  q = vec.transform([query])
  return np.asarray((docs @ q.T).toarray()[:, 0], dtype=np.float64)
