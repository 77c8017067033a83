"""titok-bench model zoo: every TiTok variant, the MaskGIT-VQGAN teacher and the MaskGIT generators.

    import models
    models.VARIANTS                      # every registered name -> Variant (sizes, release, notes)
    tok = models.build("TiTok-L-32")     # random init; keyword overrides replace config fields
    tok = models.from_pretrained("TiTok-L-32")   # or a hub repo id, a hub-style folder, a .bin, our own file
    ids = tok.encode(images)             # images [B, 3, 256, 256] in [0, 1] -> ids [B, 32]
    images = tok.decode(ids)
    gen = models.from_pretrained("MaskGIT-ViT:TiTok-L-32")
    ids = gen.generate(labels)           # the released sampler settings unless overridden

`python -m models` prints the registry as a table.
"""

from .checkpoint_format import load, save
from .generators import GeneratorConfig, MaskGITGenerator
from .maskgit_vqgan import MaskGITVQGAN, VQGANConfig
from .pretrained import from_pretrained
from .sampling import SamplerSettings
from .state_dicts import CheckpointMismatchError
from .titok import TiTok, TiTokConfig
from .variants import VARIANTS, Variant, build, build_from_config, resolve

__all__ = [
    "VARIANTS",
    "Variant",
    "build",
    "build_from_config",
    "resolve",
    "from_pretrained",
    "load",
    "save",
    "CheckpointMismatchError",
    "TiTok",
    "TiTokConfig",
    "MaskGITGenerator",
    "GeneratorConfig",
    "MaskGITVQGAN",
    "VQGANConfig",
    "SamplerSettings",
]
