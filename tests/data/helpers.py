"""Small real pieces the data tests train with (no mocks of the data path)."""

import lightning as L
import torch


class Recorder(L.LightningModule):
    """A one-parameter module that records the sample ids of every micro-batch it trains on."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []
        self.epochs: list[int] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(list(batch.ids))
        self.epochs.append(self.current_epoch)
        return ((self.w - float(len(batch))) ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(tmp_path, **kw):
    kw = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
          "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path), **kw}
    return L.Trainer(**kw)


def modality(input_ids_row) -> str:
    from lmm.text.tokenize import IMAGE_TOKEN_INDEX

    return "image" if bool((input_ids_row == IMAGE_TOKEN_INDEX).any()) else "text"
