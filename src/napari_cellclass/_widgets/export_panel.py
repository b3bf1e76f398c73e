"""The Training dock's "Export" part: the active model as a BioImage Model Zoo package, ONNX or TorchScript."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from napari.utils.notifications import show_error, show_info

from .model_panel import fixed_lines
from .session import CellclassSession
from .training_model import Failed, import_learning_libraries
from .workers import DockJob, JobProgress, guarded_steps

#: (shown, format) of the export formats.
FORMAT_CHOICES = (("BioImage Model Zoo (.zip)", "bioimageio"), ("ONNX", "onnx"), ("TorchScript", "torchscript"))


class ExportPanel(Container):
    """Export the active model (checked on the project's images) to a file beside it or a chosen one."""

    def __init__(self, shared: CellclassSession) -> None:
        super().__init__(labels=False)
        self.shared = shared
        self.format = ComboBox(choices=FORMAT_CHOICES, value="bioimageio", label="format",
                               tooltip="BioImage Model Zoo: runs in deepImageJ, ilastik, the zoo's tools and here "
                                       "(predict --model); ONNX / TorchScript: the network alone")
        self.target = FileEdit(label="export to", mode="w",
                               tooltip="the file to write (empty: beside the model folder)")
        self.button = PushButton(text="Export active model")
        self.button.tooltip = "export the active model, checked against PyTorch on this project's images"
        self.status = Label(value="")
        fixed_lines(self.status, 3)
        self.job = DockJob("an export", start_buttons=[self.button])
        self.bar = JobProgress()
        self.last: Any = None  # the last ExportResult
        self.extend([Container(widgets=[self.format, self.target], labels=True), self.button, self.status])
        self.margins = (0, 0, 0, 0)
        self.button.changed.connect(lambda _v: self.export())

    def _target(self) -> str | None:
        value = self.target.value
        return None if not value or str(value) in ("", ".") else str(value)

    def export(self) -> Any:
        """Export the active model in a worker; returns the worker, or None (with a message) when it cannot start."""
        project, model = self.shared.project, self.shared.model
        if not self.job.ready_for(project, model):
            return None
        _import_libraries()
        from ..learn.export import export_model

        fmt = str(self.format.value)
        self.status.value = f"exporting {Path(model).name} ({fmt})…"
        self.bar.start(f"Exporting {Path(model).name}", 4)
        return self.job.start(guarded_steps, export_model, (str(model), fmt, self._target()),
                              {"project": project}, on_item=self._on_item, on_done=self.bar.close)

    def _on_item(self, item: Any) -> None:
        from ..learn.export import ExportResult

        if isinstance(item, tuple):
            self.bar.update(item[0], item[1])
        elif isinstance(item, Failed):
            self.status.value = f"export failed: {item.message}"
            show_error(f"Export failed: {item.message}")
        elif isinstance(item, ExportResult):
            self.last = item
            worst = max(item.parity.values(), default=0.0)
            tested = "bioimageio.core's test passed; " if item.format == "bioimageio" else ""
            self.status.value = (f"exported {item.path.name} ({tested}probabilities within {worst:.0e} of "
                                 "PyTorch's)")
            self.status.tooltip = str(item.path)
            show_info(f"model exported to {item.path}")


def _import_libraries() -> None:
    """The exporters' libraries imported in the main thread (never first in a worker)."""
    import_learning_libraries()
    import bioimageio.core  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401


__all__ = ["FORMAT_CHOICES", "ExportPanel"]
