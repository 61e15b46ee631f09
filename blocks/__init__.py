"""vmb blocks: research video blocks and classic video classifiers, registered by name."""

from blocks.registry import (
    BlockInfo,
    UnknownBlockError,
    UnsafeCheckpointError,
    WeightsMismatchError,
    block_info,
    create_block,
    list_blocks,
    load_weights,
    param_count,
    register_block,
)

__all__ = [
    "BlockInfo",
    "UnknownBlockError",
    "UnsafeCheckpointError",
    "WeightsMismatchError",
    "block_info",
    "create_block",
    "list_blocks",
    "load_weights",
    "param_count",
    "register_block",
]
