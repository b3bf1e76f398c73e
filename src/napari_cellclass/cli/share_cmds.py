"""Subcommands that take a model elsewhere: export (BioImage Model Zoo package, ONNX, TorchScript)."""
from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add the export subcommand."""
    from . import add_common

    p = sub.add_parser("export", help="export a model: BioImage Model Zoo package, ONNX or TorchScript",
                       description="Export a model folder. bioimageio: a BioImage Model Zoo package (model spec 0.5; "
                                   "TorchScript, ONNX and PyTorch weights, test tensors and cover images from real "
                                   "project images) that bioimageio.core's model test passes before it is written; "
                                   "it runs in deepImageJ, ilastik, the zoo's Python tools and 'predict --model' "
                                   "here. onnx / torchscript: the network alone (logits; any batch size). Every "
                                   "export is checked against the PyTorch model on real images.")
    p.add_argument("model", help="model folder")
    p.add_argument("--format", required=True, choices=("bioimageio", "onnx", "torchscript"))
    p.add_argument("--out", metavar="PATH", help="file to write (default: <project>/cellclass_exports/ for a "
                                                 "project's model, else beside the model folder; named "
                                                 "MODEL.bioimageio.zip, MODEL.onnx or MODEL.torchscript.pt)")
    p.add_argument("--project", metavar="DIR", help="project whose images check the export and make the test "
                                                    "tensors (default: the one the model was trained on)")
    p.add_argument("--author", metavar="NAME", help="the package's author (bioimageio; default: your login name)")
    p.add_argument("--license", default="CC-BY-4.0", metavar="SPDX",
                   help="the package's licence, an SPDX id (bioimageio; default CC-BY-4.0)")
    add_common(p)
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    """Export the model and print where it went and how closely it matches."""
    from ..learn.export import export_model
    from . import emit, stderr_progress

    result = export_model(args.model, args.format, args.out, project=args.project, author=args.author,
                          license=args.license, progress=stderr_progress(f"exporting ({args.format})"))
    out = result.to_dict()

    def human(r: dict[str, Any]) -> str:
        checks = ", ".join(f"{k} {v:.1e}" for k, v in r["parity"].items())
        lines = [f"exported {r['model']} as {r['format']}: {r['path']}",
                 f"  largest difference in probabilities from the PyTorch model on {len(r['images'])} project "
                 f"image(s): {checks} "
                 f"(allowed {r['tolerance']:g})"]
        if r["format"] == "bioimageio":
            lines.append("  bioimageio.core's model test passed for every weight format")
        lines += [f"  note: {n}" for n in r["notes"]]
        return "\n".join(lines)

    emit(args, out, human)
    return out
