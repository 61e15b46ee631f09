"""A printable catalogue of the registry (used by `python -m blocks` and `vmb blocks`)."""

from __future__ import annotations

from blocks.registry import block_info, list_blocks, param_count


def catalog_rows() -> list[dict[str, object]]:
    """One row per registered block, built at its default configuration (no weights loaded)."""
    rows = []
    for name in list_blocks():
        info = block_info(name)
        model = info.builder(
            **({"pretrained": False} if "pretrained" in _params(info.builder) else {})
        )
        rows.append(
            {
                "name": name,
                "params": param_count(model),
                "paper": info.paper,
                "arxiv": info.arxiv or "",
                "input": info.input_layout,
            }
        )
    return rows


def _params(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def print_catalog() -> None:
    rows = catalog_rows()
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'params':>12}  arXiv       input")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['params']:>12,}  {r['arxiv']:<10}  {r['input']}")
