"""`golf export`: a fit's (or any recipe's) packer and decoder as one file for a train_gpt.py.

    golf export FIT_DIR|RECIPE [--out golf_codec.py] [--plain-code] [--json]

The work is artifact.export; this module reads the flags and prints what was written and its
counted bytes.
"""

from __future__ import annotations

from analysis.cliutil import add_json_flag, emit
from artifact.export import build_export, export_recipe, write_export

DEFAULT_OUT = "golf_codec.py"


def add_arguments(p) -> None:
    p.add_argument("source", metavar="FIT_DIR|RECIPE",
                   help="a `golf fit` output folder (its recipe.toml), a recipe .toml file or a bundled recipe name")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="FILE",
                   help=f"the file to write; replaced only if a previous export (default: {DEFAULT_OUT})")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--compact", dest="compact", action="store_true", default=True,
                      help="minified sources compressed and base85-embedded: the fewest counted bytes (default)")
    form.add_argument("--plain-code", dest="compact", action="store_false",
                      help="the minified sources as readable string literals, more counted bytes (default: off)")
    add_json_flag(p)


def run(args) -> int:
    export = build_export(export_recipe(args.source), compact=args.compact)
    write_export(export, args.out)
    emit({**export.to_dict(), "out": str(args.out)}, args.json, _text)
    return 0


def _text(r: dict) -> str:
    other = (f"plain form {r['plain_bytes']:,} bytes" if r["compact"] else f"compact form {r['compact_bytes']:,} bytes")
    return "\n".join([
        f"recipe       {r['recipe']}",
        f"bundled      {len(r['modules'])} modules, {sum(r['modules'].values()):,} bytes of minified source "
        f"({', '.join(r['modules'])})",
        f"needs        numpy, torch{''.join(', ' + lib for lib in r['libraries'])}",
        f"counted      {r['bytes']:,} bytes ({'compact' if r['compact'] else 'plain'}; {other})",
        f"wrote        {r['out']}  (from golf_codec import collect_hessians, pack, unpack)",
    ])
