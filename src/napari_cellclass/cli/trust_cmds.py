"""Subcommands that show why a model decides: explain (saliency maps as TIFF + PNG overlay files)."""
from __future__ import annotations

import argparse
from typing import Any

#: Images explained (and written) per step, so a whole project never sits in memory at once.
CHUNK = 32


def register(sub: argparse._SubParsersAction) -> None:
    """Add the explain subcommand."""
    from ..core.saliency_names import METHODS
    from . import add_common, add_device

    p = sub.add_parser("explain", help="saliency maps: what the model looked at in each image",
                       description="Write, for each chosen image, a float32 TIFF saliency map at the image's own "
                                   "resolution (1: looked at most) and a PNG of the map over the image. gradcam: "
                                   "Grad-CAM on the backbone's last convolutional stage; integrated-gradients: "
                                   "per-pixel attributions (any backbone, also vision transformers). Files are named "
                                   "from the image id: a/b.tif -> a__b_<method>_<class>.tif and .png.")
    p.add_argument("folder", help="project folder")
    p.add_argument("--model", metavar="MODEL", help="model folder (default: the project's newest model)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ids", nargs="+", metavar="ID", help="image ids to explain (as listed by 'info --json')")
    which.add_argument("--all", action="store_true", help="explain every image of the project")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="the class to explain (default: each image's predicted class)")
    p.add_argument("--method", choices=METHODS, default=METHODS[0], help=f"saliency method (default {METHODS[0]})")
    p.add_argument("--out", metavar="DIR", help="folder for the maps (outside the project)")
    add_device(p)
    add_common(p)
    p.set_defaults(handler=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> dict[str, Any]:
    """Explain the chosen images and write their maps."""
    from ..core.errors import ConfigError
    from ..core.project import Project
    from ..learn.predict import as_trained_model
    from ..learn.saliency import check_class, check_method, explain
    from ..learn.saliency_files import check_out_folder, plan_files, write_maps
    from ..learn.suggest import newest_model
    from . import emit, stderr_progress

    project = Project.open(args.folder, create=False)
    check_method(args.method)
    if not args.out:
        raise ConfigError("explain needs --out DIR: the folder for the maps (outside the project)")
    if not args.ids and not args.all:
        raise ConfigError("explain needs --ids ID [ID ...] or --all (every image of the project)")
    out_dir = check_out_folder(args.out, project.root)
    ids = list(project.image_ids) if args.all else list(dict.fromkeys(args.ids))
    for iid in ids:
        project.path(iid)  # an unknown id: one line naming it
    folder = args.model or newest_model(project)
    if folder is None:
        raise ConfigError(f"{project.root} has no model with its classes yet; train one or give --model MODEL")
    trained = as_trained_model(folder)
    check_class(trained, args.class_name)
    progress = stderr_progress("explaining")
    taken: set[str] = set()
    images: list[dict[str, Any]] = []
    files: list[str] = []
    skipped: list[dict[str, str]] = []
    for start in range(0, len(ids), CHUNK):
        part = ids[start:start + CHUNK]
        result = explain(trained, project, ids=part, class_name=args.class_name, method=args.method,
                         device=args.device,
                         progress=lambda d, _t, s=start: progress(s + d, len(ids)))
        plan = plan_files(out_dir, result.maps, project.root, taken)
        write_maps(result.maps, [project.read_image(m.image_id) for m in result.maps], plan, trained.name)
        for m, f in zip(result.maps, plan, strict=True):
            images.append({**m.to_dict(), "tiff": str(f.tiff), "png": str(f.png)})
            files += [str(f.tiff), str(f.png)]
        skipped += [{"image_id": k, "reason": v} for k, v in result.skipped.items()]
    out = {"ok": True, "model": str(trained.path), "method": args.method, "out": str(out_dir), "n": len(images),
           "files": files, "images": images, "skipped": skipped}

    def human(r: dict[str, Any]) -> str:
        lines = [f"explained {r['n']} image(s) with {r['method']} (model {trained.name}); maps in {r['out']}"]
        lines += [f"  {i['image_id']}: {i['class']} (predicted {i['predicted']}, p={i['probability']:.3f}) -> "
                  f"{i['png']}" for i in r["images"]]
        lines += [f"skipped {s['image_id']}: {s['reason']}" for s in r["skipped"]]
        return "\n".join(lines)

    emit(args, out, human)
    return out
