"""The authors' released checkpoints that ``side4video import`` converts: where each is published,
its reported accuracy and views, and the commands that import and evaluate it.

Views are frames x spatial crops x temporal clips, as the authors evaluated them.
"""

from __future__ import annotations

from dataclasses import dataclass

_S4V = "https://unisyd-my.sharepoint.com/:u:/g/personal/wenhao_wu_sydney_edu_au/"
_ZEROI2V = "https://huggingface.co/MCG-NJU/ZeroI2V"


@dataclass(frozen=True)
class ZooEntry:
    name: str  # the export directory the commands use
    method: str
    backbone: str
    frames: int
    dataset: str
    top1: float  # the authors' reported top-1 (%)
    crops: int
    clips: int
    url: str  # where the authors publish the file
    recipe: str  # our config that trains the same model
    clip_weights: str | None = None  # ST-Adapter: the OpenAI CLIP file its frozen ViT comes from

    @property
    def views(self) -> str:
        return f"{self.frames}x{self.crops}x{self.clips}"

    def import_command(self, checkpoint: str = "CHECKPOINT") -> str:
        parts = ["side4video import", checkpoint]
        if self.clip_weights:
            parts.append(f"--pretrained {self.clip_weights}")
        if self.method == "Side4Video" and self.frames != 8:
            parts.append(f"--frames {self.frames}")  # not stored in the checkpoint
        return " ".join([*parts, f"--out zoo/{self.name}"])

    def eval_command(self) -> str:
        return (f"side4video eval --checkpoint zoo/{self.name} --views {self.crops}x{self.clips} "
                f"--val-list VAL_LIST --data-root VIDEOS")


ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("side4video-k400-b16", "Side4Video", "ViT-B/16", 8, "Kinetics-400", 83.6, 3, 4,
             _S4V + "EQD0OxnGqOlHj8w3ypX0uwcBGLpQF6Qht8Y6ZWybHTBHKw?e=yTg3WI", "configs/k400_side4video-b16.yaml"),
    ZooEntry("side4video-k400-e14", "Side4Video", "EVA02-E/14", 16, "Kinetics-400", 88.6, 3, 4,
             _S4V + "EWviEs4mF-9HoQOr8K2hiXYBx-06OLLEukvtEMkgLT-oxg?e=ecAkfB",
             "configs/k400_side4video-e14-light.yaml --frames 16"),
    ZooEntry("side4video-ssv1-b16", "Side4Video", "ViT-B/16", 8, "Something-Something V1", 59.4, 3, 2,
             _S4V + "ES8TQBqmhdRAvs1SNi3yD8AB5nVcCCXzld9Xm8MWh3WHAA?e=Tsz5AQ", "configs/ssv1_side4video-b16.yaml"),
    ZooEntry("side4video-ssv1-e14", "Side4Video", "EVA02-E/14", 16, "Something-Something V1", 67.3, 3, 2,
             _S4V + "EUk9-WQvgRtFq6iDj75aF5EBRkn2LF6-ApaarLRHkQ4p5A?e=4WU1Z0",
             "configs/ssv1_side4video-e14-light.yaml --frames 16"),
    ZooEntry("side4video-ssv2-b16", "Side4Video", "ViT-B/16", 8, "Something-Something V2", 70.6, 3, 2,
             _S4V + "ETjXdYztCpRHmXM8JGPVPCIBsi1LkOJIzidhNzZxWxj53g?e=lvIe8H", "configs/ssv2_side4video-b16.yaml"),
    ZooEntry("side4video-ssv2-e14", "Side4Video", "EVA02-E/14", 16, "Something-Something V2", 75.2, 3, 2,
             _S4V + "Eae070rFi4NDm9qgZrNae0oBiWHovBa2WiQQ7LB7wgT7EA?e=Qan3RO",
             "configs/ssv2_side4video-e14-light.yaml --frames 16"),
    ZooEntry("st-adapter-k400-b16", "ST-Adapter", "ViT-B/16", 8, "Kinetics-400", 82.2, 1, 3,
             "https://drive.google.com/file/d/17p_cvZaLmgWt-snKbQOmAT-WwhFAvc3M/view",
             "configs/k400_st-adapter-b16.yaml", clip_weights="pretrained/ViT-B-16.pt"),
    ZooEntry("st-adapter-ssv2-b16", "ST-Adapter", "ViT-B/16", 8, "Something-Something V2", 66.9, 3, 1,
             "https://drive.google.com/file/d/1SIpEutqUQ4tBsLD_Lzo7GUiQq0NpWDOu/view",
             "configs/ssv2_st-adapter-b16-x2.yaml", clip_weights="pretrained/ViT-B-16.pt"),
    ZooEntry("zeroi2v-k400-b16", "ZeroI2V", "ViT-B/16", 8, "Kinetics-400", 83.0, 1, 3, _ZEROI2V,
             "configs/k400_zeroi2v-b16.yaml"),
    ZooEntry("zeroi2v-k400-l14", "ZeroI2V", "ViT-L/14", 8, "Kinetics-400", 86.3, 1, 3, _ZEROI2V,
             "configs/k400_zeroi2v-l14.yaml"),
    ZooEntry("zeroi2v-k400-l14-32f", "ZeroI2V", "ViT-L/14", 32, "Kinetics-400", 87.2, 1, 3, _ZEROI2V,
             "configs/k400_zeroi2v-l14.yaml --frames 32"),
    ZooEntry("zeroi2v-ssv2-l14-32f", "ZeroI2V", "ViT-L/14", 32, "Something-Something V2", 72.2, 3, 1, _ZEROI2V,
             "configs/ssv2_zeroi2v-l14.yaml --frames 32"),
)


def zoo_table() -> str:
    """The zoo as a Markdown table (``side4video zoo`` and the README)."""
    rows = [
        "| model | method | backbone | dataset | views | top-1 (authors) | file | import | evaluate "
        "| trains the same |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in ZOO:
        rows.append(
            f"| `{e.name}` | {e.method} | {e.backbone} | {e.dataset} | {e.views} | {e.top1:.1f} | [link]({e.url}) "
            f"| `{e.import_command()}` | `{e.eval_command()}` | `{e.recipe}` |"
        )
    return "\n".join(rows)
