"""The flags that loosen the checks on preference records, defined once for every command that
reads records (rdance.run.preference_set, rdance.run.score): absl keeps one flag per name per
process, and the same flag must mean the same thing wherever it is given."""
from absl import flags
from PIL import Image

ALLOW_OUTSIDE_PATHS = flags.DEFINE_bool(
    "allow_outside_paths", False, "let a JSONL file's image paths lead outside its folder (../, absolute "
    "paths, symlinks); off, such a record is an error naming it")
MAX_IMAGE_PIXELS = flags.DEFINE_integer(
    "max_image_pixels", Image.MAX_IMAGE_PIXELS, "an image with more pixels is a bad record (PIL's "
    "decompression-bomb guard; the default is PIL's own limit)", lower_bound=1)
