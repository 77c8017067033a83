"""The registry's entries: each pretrained file's name, cache path, source URL or hub repo, and its check.

Fixed files (Inception, LPIPS, VGG16, ConvNeXt-S, the MaskGIT-VQGAN teacher, the ADM reference batch) are listed
here; every released variant of the zoo with a hub repo adds a hub-style folder. Hub entries carry the revision
models/hub_revisions.json pins (None: not pinned yet). The checks (`hash_kind`, `structure`) are explained in
docs/weights.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from models import hub, variants

INCEPTION = "inception-fid"
LPIPS_VGG = "lpips-vgg"
VGG16 = "vgg16"
CONVNEXT_SMALL = "convnext-small"
TEACHER = "MaskGIT-VQGAN"
ADM_REFERENCE_256 = "VIRTUAL_imagenet256_labeled"
TITOK_REPO = "fun-research/TiTok"  # the hub repo holding the teacher's raw file


@dataclass(frozen=True)
class Entry:
    name: str
    filename: str  # path under cache_dir(); a folder for hub repos
    url: str  # download URL (hub repos: the repo page; files come from `downloads()`)
    description: str
    sha256: str | None = None
    hash_kind: str = "none"  # "sha256" (full), "sha256-prefix" or "none"
    hash_note: str = ""  # where the hash comes from, or why there is none, and what verify() checks instead
    hub_repo: str | None = None  # the hub repo it comes from (a folder's repo, or the repo of a hub file)
    hub_files: tuple[str, ...] = ()  # the files of a hub-style folder
    structure: str | None = None  # "inception" | "lpips": verify() compares tensor names and shapes
    revision: str | None = None  # hub files: the commit models/hub_revisions.json pins (None: not pinned yet)

    @property
    def is_folder(self) -> bool:
        return bool(self.hub_files)

    def downloads(self, commit: str | None = None) -> list[tuple[str, str]]:
        """(relative path under cache_dir, URL) for every file of the entry; hub files at `commit` (default: the
        pinned revision, else main)."""
        at = commit or self.revision or "main"
        if self.is_folder:
            return [
                (f"{self.filename}/{f}", f"https://huggingface.co/{self.hub_repo}/resolve/{at}/{f}")
                for f in self.hub_files
            ]
        if self.hub_repo:
            return [(self.filename, f"https://huggingface.co/{self.hub_repo}/resolve/{at}/{self.filename}")]
        return [(self.filename, self.url)]


_TV_NOTE = "first 8 hex digits of the sha256, from torchvision's file name (torch.hub checks them as a prefix)"
_HUB_NOTE = "no published sha256 known here; verify() checks that every file is present and readable"


def _fixed_entries() -> list[Entry]:
    teacher_rev = variants.pinned_revision(TITOK_REPO)
    return [
        Entry(
            INCEPTION,
            "weights-inception-2015-12-05-6726825d.pth",
            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
            "torch-fidelity InceptionV3 (TF 2015-12-05 graph port): FID/IS/sFID/precision-recall features",
            hash_note="no verified sha256: the '6726825d' in the name comes from pytorch-fid's file and "
            "torch-fidelity never checks it; verify() checks the 566 tensor names and shapes",
            structure="inception",
        ),
        Entry(
            LPIPS_VGG,
            "lpips-v0.1-vgg.pth",
            "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
            "LPIPS v0.1 learned 1x1 linear layers on VGG16 features (upstream file name vgg.pth; "
            "taming-transformers ships the same layers as vgg.pth)",
            hash_note="no published sha256 known here; verify() checks the 5 layers' names and shapes",
            structure="lpips",
        ),
        Entry(
            VGG16,
            "vgg16-397923af.pth",
            "https://download.pytorch.org/models/vgg16-397923af.pth",
            "torchvision VGG16 IMAGENET1K_V1: the LPIPS feature network",
            sha256="397923af",
            hash_kind="sha256-prefix",
            hash_note=_TV_NOTE,
        ),
        Entry(
            CONVNEXT_SMALL,
            "convnext_small-0c510722.pth",
            "https://download.pytorch.org/models/convnext_small-0c510722.pth",
            "torchvision ConvNeXt-Small IMAGENET1K_V1: the stage-2 'perceptual' loss (MSE between logits)",
            sha256="0c510722",
            hash_kind="sha256-prefix",
            hash_note=_TV_NOTE,
        ),
        Entry(
            TEACHER,
            "maskgit-vqgan-imagenet-f16-256.bin",
            f"https://huggingface.co/{TITOK_REPO}/resolve/{teacher_rev or 'main'}/maskgit-vqgan-imagenet-f16-256.bin",
            "MaskGIT-VQGAN f16 256px (raw state_dict): proxy-code teacher and pixel decoder",
            hash_note="no published sha256 known here; verify() checks that the state_dict loads",
            hub_repo=TITOK_REPO,
            revision=teacher_rev,
        ),
        Entry(
            ADM_REFERENCE_256,
            "VIRTUAL_imagenet256_labeled.npz",
            "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
            "VIRTUAL_imagenet256_labeled.npz",
            "ADM reference batch for ImageNet 256x256 gFID/sFID/precision/recall (mu, sigma, mu_s, sigma_s, "
            "10k images): not weights, but fetched and cached the same way",
            hash_note="no published sha256 known here; verify() checks that it holds mu and sigma",
        ),
    ]


def _hub_entries() -> list[Entry]:
    # The released TiTok tokenizers and generators, one hub-style folder each (config.json + model.safetensors),
    # the folders models.from_pretrained reads (models.hub.hub_folder).
    out = []
    for v in variants.VARIANTS.values():
        if v.hub_repo:
            out.append(
                Entry(
                    v.name,
                    hub.hub_folder_name(v.hub_repo),
                    f"https://huggingface.co/{v.hub_repo}",
                    f"released {v.kind} {v.name} (hub repo {v.hub_repo})" + (f"; {v.note}" if v.note else ""),
                    hash_note=_HUB_NOTE,
                    hub_repo=v.hub_repo,
                    hub_files=hub.HUB_FILES,
                    revision=v.revision,
                )
            )
    return out


_REGISTRY: dict[str, Entry] | None = None


def registry() -> dict[str, Entry]:
    """All entries by name (built once)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = {e.name: e for e in _fixed_entries() + _hub_entries()}
    return _REGISTRY


def entry(name: str) -> Entry:
    reg = registry()
    if name not in reg:
        import difflib

        close = difflib.get_close_matches(name, reg, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no pretrained weights named {name!r}.{hint} `python -m bench.weights list` shows them all.")
    return reg[name]


def forget_registry() -> None:
    """Rebuild the registry at its next use (its entries carry the pinned revisions, which changed)."""
    global _REGISTRY
    _REGISTRY = None
