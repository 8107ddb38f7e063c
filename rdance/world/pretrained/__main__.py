"""``python -m rdance.world.pretrained``: ship an export folder as one of the world's pretrained models."""
from rdance.world.pretrained import main

main()
