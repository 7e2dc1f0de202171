"""`clipsonic weights list|verify|import-clip|import-prior`: the weights manifest and converting official checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipsonic.cli.common import command_group, help_formatter
from clipsonic.errors import ClipsonicError


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    actions = command_group(commands, "weights", "list and verify model weight files",
                             "List and verify the weight files named in the manifest.")
    folder_help = ("folder holding downloaded official files; repeatable "
                   "(default: $CLIPSONIC_WEIGHTS or ~/.cache/clipsonic/weights)")

    listing = actions.add_parser("list", parents=[common], formatter_class=help_formatter,
                                 help="show every known weight file, where it comes from and whether it is here",
                                 description="Show every weight file in the manifest: kind, whether a copy "
                                             "is present, its source and licence. Does not hash files.")
    listing.add_argument("--dir", type=Path, action="append", help=folder_help)
    listing.set_defaults(handler=_weights_list)

    check = actions.add_parser("verify", parents=[common], formatter_class=help_formatter,
                               help="check the sha256 of the weight files that are present",
                               description="Hash every present weight file (or those named) against the "
                                           "manifest. Exit 1 on a mismatch or when a named file is missing.")
    check.add_argument("names", nargs="*", metavar="NAME", help="entries to verify (default: all present)")
    check.add_argument("--dir", type=Path, action="append", help=folder_help)
    check.set_defaults(handler=_weights_verify)

    importer = actions.add_parser("import-clip", parents=[common], formatter_class=help_formatter,
                                  help="convert a CLIP checkpoint (OpenAI .pt, state dict, Hugging Face) to ours",
                                  description="Read a CLIP checkpoint in any supported layout (OpenAI TorchScript "
                                              "archive, OpenAI state dict, Hugging Face folder or file, ours), "
                                              "write it as a clipsonic checkpoint and verify the copy.")
    importer.add_argument("path", type=Path, help="checkpoint file or Hugging Face model folder")
    importer.add_argument("-o", "--output", type=Path,
                          help="where to write (default: clip-<name>.pt in the user weights folder)")
    importer.set_defaults(handler=_weights_import_clip)

    prior = actions.add_parser("import-prior", parents=[common], formatter_class=help_formatter,
                               help="convert LAION's DALL-E 2 prior (latest.pth + prior_config.json) to ours",
                               description="Read LAION's diffusion prior (a plain state dict or one wrapped under "
                                           "'ema'/'model'; fp16 or fp32) with its prior_config.json, write it as a "
                                           "clipsonic checkpoint and verify the copy.")
    prior.add_argument("path", type=Path, help="the prior checkpoint, e.g. latest.pth")
    prior.add_argument("--config", type=Path, help="prior_config.json (default: beside the checkpoint; without one "
                                                   "the architecture is read off the tensor shapes)")
    prior.add_argument("-o", "--output", type=Path, help="where to write (default: prior-laion.pt in the user "
                                                         "weights folder)")
    prior.set_defaults(handler=_weights_import_prior)


def _folders(args: argparse.Namespace) -> list[Path] | None:
    return [folder.expanduser() for folder in args.dir] if args.dir else None


def _weights_list(args: argparse.Namespace) -> int:
    from clipsonic import manifest

    folders = _folders(args)
    entries = manifest.load_manifest()
    width = max(len(name) for name in entries)
    for entry in entries.values():
        path = manifest.locate(entry, folders)
        state = "shipped" if entry.shipped and path else "present" if path else "missing"
        print(f"{entry.name:<{width}}  {entry.kind:<12}  {state:<8}  {path or entry.file}")
        print(f"{'':<{width}}  source:  {entry.source}")
        print(f"{'':<{width}}  licence: {entry.licence}")
    where = ", ".join(str(f) for f in folders or [manifest.user_folder()])
    print(f"\nofficial files are looked for in: {where}")
    return 0


def _weights_verify(args: argparse.Namespace) -> int:
    from clipsonic import manifest

    entries = manifest.load_manifest()
    unknown = [name for name in args.names if name not in entries]
    if unknown:
        raise ClipsonicError(f"unknown weight name(s) {', '.join(unknown)} (see 'clipsonic weights list')")
    chosen = [entries[name] for name in args.names] if args.names else list(entries.values())
    results = [manifest.verify(entry, _folders(args)) for entry in chosen]
    width = max(len(result.entry.name) for result in results)
    for result in results:
        print(f"{result.entry.name:<{width}}  {result.status:<8}  {result.path or '-'}: {result.detail}")
    failures = [r for r in results if r.failed or (args.names and r.status == "missing")]
    if failures:
        raise ClipsonicError(f"{len(failures)} weight file(s) failed verification: "
                             + ", ".join(r.entry.name for r in failures))
    return 0


def _weights_import_clip(args: argparse.Namespace) -> int:
    from clipsonic import clip, manifest
    from clipsonic.checkpoint import verify_reload

    source = args.path
    state, _, layout = clip.read_clip_weights(source)
    model = clip.load_clip(source)
    output = args.output or manifest.user_folder() / f"clip-{source.resolve().name.split('.')[0]}.pt"
    clip.save_clip(output, model)
    verify_reload(model, clip.load_clip(output), output, source)
    config = model.config
    print(f"read      {source} ({layout} layout, {len(state)} tensors)")
    print(f"model     ViT {config.image_resolution}px/{config.vision_patch_size}, vision {config.vision_width}x"
          f"{config.vision_layers}, text {config.text_width}x{config.text_layers}, embed {config.embed_dim}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    if source.is_file():
        digest = manifest.sha256_file(source)
        known = [e.name for e in manifest.load_manifest().values() if e.sha256 == digest]
        print(f"sha256    {digest}" + (f" (the official {known[0]})" if known else ""))
    print(f"wrote     {output} (float32; reloads identically)")
    return 0


def _weights_import_prior(args: argparse.Namespace) -> int:
    from clipsonic import manifest, prior
    from clipsonic.checkpoint import verify_reload

    model = prior.load_prior(args.path, args.config)
    output = args.output or manifest.user_folder() / "prior-laion.pt"
    prior.save_prior(output, model)
    verify_reload(model, prior.load_prior(output), output, args.path)
    net = model.config.net
    print(f"read      {args.path} ({model.origin} prior: dim {net.dim}, depth {net.depth}, {net.heads} heads of "
          f"{net.dim_head}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    print(f"wrote     {output} (float32; reloads identically)")
    return 0
