"""The `dare` command.

dare --help
dare info PATH                      # print a checkpoint's family and DiffusionSpec
"""

from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from dare.models import family_of, load_config

    config = load_config(args.path)
    print(f"family: {family_of(config).name}")
    print(f"spec:   {config.diffusion_spec()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dare", description="Post-train diffusion language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="show a checkpoint's family and diffusion spec")
    p.add_argument("path", help="local checkpoint folder")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"dare: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
