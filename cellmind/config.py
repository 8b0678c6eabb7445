"""Run configuration: one dataclass per section of ``config.json``, loaded with comments and old key names.

The file keeps the sections of CellMind's original design (``model``, ``tokenizer``, ``training``) and adds
``swarm``. Old key names map onto the model's field names (``d_model`` -> ``n_embd``, ``nhead`` -> ``n_head``,
``num_layers`` -> ``n_layer``, ``training.dataset.seq_len`` -> ``training.seq_len``). The old ``distributed``
section is accepted with one warning, because peers now find each other through the DHT.
Every default runs on a laptop CPU.
"""

import dataclasses
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import json5

from cellmind.errors import ConfigError
from cellmind.i18n import _

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("config.json")


@dataclass
class ModelSection:
    n_embd: int = 512
    """Width of the residual stream (``d_model`` in the original config)."""
    n_head: int = 8
    """Attention heads per layer; must divide ``n_embd``."""
    n_layer: int = 6
    """Transformer blocks."""
    dropout: float = 0.1
    """Dropout probability in attention and MLP outputs during training."""
    attention_dropout: float = 0.0
    """Dropout probability on the attention weights; above 0 the attention uses more memory and time."""
    block_size: int = 256
    """Context length in tokens."""
    checkpoint: str = "checkpoints/latest.pt"
    """Where this peer writes and resumes its checkpoint."""


@dataclass
class TokenizerSection:
    model_path: str = "tokenizer/tokenizer.model"
    """SentencePiece model file every peer shares."""
    vocab_size: int = 8000
    """Vocabulary size used when training the tokenizer; the model takes its size from the tokenizer file."""
    character_coverage: float = 0.9995
    """Fraction of characters covered by single pieces; the rest fall back to bytes."""
    model_type: str = "bpe"
    """SentencePiece model type: ``bpe`` or ``unigram``."""


@dataclass
class TrainingSection:
    batch_size: int = 2
    """Samples per micro-step on this peer (``batch_size_per_step`` in Hivemind's words).

    Peers accumulate micro-steps until the swarm has ``swarm.target_batch_size`` samples, so this sets the memory
    of a micro-step, not the update. With 2 windows of 256 tokens the 23M model's activations take about 0.25 GB
    on a CPU, against about 1.1 GB with 8 (estimated from the peak RSS of one fp32 forward and backward). A GPU
    peer may raise it with ``--batch-size-per-step``.
    """
    epochs: int = 0
    """Passes over this peer's own data before it stops; 0 means no limit."""
    lr: float = 3e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    warmup_steps: int = 20
    """Global steps of linear learning-rate warm-up."""
    grad_clip: float = 1.0
    """Maximum norm of a peer's mean gradient over a global step, before averaging; 0 disables clipping."""
    dataset_path: str = "data/for-model-training/train.jsonl"
    """JSONL file of ``{"text": ...}`` records (``training.dataset.path`` in the original config)."""
    val_path: str = "data/for-model-training/val.jsonl"
    """Validation JSONL file."""
    seq_len: int = 256
    """Tokens per training window (``training.dataset.seq_len``); at most ``model.block_size``."""
    seed: int = 0
    """Seed of the model's initialization, identical on every peer so that they start from one model."""
    checkpoint_every: int = 10
    """Global steps between checkpoints."""
    keep_checkpoints: int = 3
    """Numbered checkpoints kept besides ``latest.pt``."""


@dataclass
class SwarmSection:
    run_id: str = "cellmind"
    """Name of the collaborative run; every DHT key of the run starts with it."""
    initial_peers: list[str] = field(default_factory=list)
    """Multiaddrs of peers already in the swarm."""
    target_batch_size: int = 256
    """Samples the whole swarm accumulates before one global step."""
    matchmaking_time: float = 5.0
    """Seconds a peer waits to gather an averaging group."""
    averaging_timeout: float = 60.0
    """Seconds before an averaging round is abandoned."""
    compression: str = "fp16"
    """Compression of averaged tensors: ``none``, ``fp16`` or ``uint8``."""
    average_state_every: int = 10
    """Global epochs between averaging rounds of parameters and Adam moments, which realign peers that missed a round."""
    client_mode: bool = False
    """Connect outwards only, for devices that cannot accept incoming connections."""
    host_maddrs: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    """Multiaddrs this peer listens on."""
    announce_maddrs: list[str] = field(default_factory=list)
    """Public multiaddrs to announce when behind NAT or port forwarding."""


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    swarm: SwarmSection = field(default_factory=SwarmSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "Config":
        return _build(cls, data, source, prefix="")


# Original key name -> field name, per section.
OLD_KEY_NAMES = {
    "model": {"d_model": "n_embd", "nhead": "n_head", "num_layers": "n_layer"},
}
DISTRIBUTED_REPLACEMENTS = {
    "backend": "the device is chosen per peer with --device",
    "init_method": "peers find each other through the DHT (--initial-peers)",
    "world_size": "peers find each other through the DHT (--initial-peers)",
    "worker_ips": "peers find each other through the DHT (--initial-peers)",
    "usernames": "peers find each other through the DHT (--initial-peers)",
}


def load_config(path: str | Path | None = None) -> Config:
    """Load ``path`` (default ``config.json`` if it exists) into a Config; a missing default file gives defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(_("config file not found: {path}").format(path=path)) from None
    try:
        data = json5.loads(text)
    except ValueError as error:
        raise ConfigError(_("{path} is not valid JSON: {error}").format(path=path, error=error)) from None
    if not isinstance(data, dict):
        raise ConfigError(_("{path} must contain a JSON object at the top level").format(path=path))
    return Config.from_dict(_upgrade_old_layout(data, path), source=str(path))


def _upgrade_old_layout(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Map the original design's keys onto the current ones and drop the ``distributed`` section with a warning."""
    data = json.loads(json.dumps(data))  # a deep copy, so the caller's dict stays as it was
    distributed = data.pop("distributed", None)
    if distributed is not None:
        keys = sorted(distributed) if isinstance(distributed, dict) else []
        replaced = "; ".join(f"{key}: {DISTRIBUTED_REPLACEMENTS.get(key, 'no longer used')}" for key in keys)
        logger.warning(
            f"{path}: the 'distributed' section is ignored because CellMind trains over a Hivemind swarm "
            f"instead of torch.distributed ({replaced}); use the 'swarm' section instead"
        )
    for section, renames in OLD_KEY_NAMES.items():
        values = data.get(section)
        if isinstance(values, dict):
            for old, new in renames.items():
                if old in values:
                    values[new] = values.pop(old)
    training = data.get("training")
    if isinstance(training, dict) and isinstance(training.get("dataset"), dict):
        dataset = training.pop("dataset")
        if "path" in dataset:
            training["dataset_path"] = dataset.pop("path")
        if "seq_len" in dataset:
            training["seq_len"] = dataset.pop("seq_len")
        if dataset:
            training["dataset"] = dataset  # leftover keys are reported as unknown below
    return data


def _build(cls, data: dict[str, Any], source: str, prefix: str):
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(
                _("unknown key '{key}' in {source}; known keys here: {known}").format(
                    key=prefix + key, source=source, known=", ".join(sorted(known))
                )
            )
    values = {}
    for key, value in data.items():
        expected = hints[key]
        if dataclasses.is_dataclass(expected):
            if not isinstance(value, dict):
                raise ConfigError(
                    _("'{key}' in {source} must be an object").format(key=prefix + key, source=source)
                )
            values[key] = _build(expected, value, source, prefix=f"{prefix}{key}.")
        else:
            values[key] = _check_type(value, expected, prefix + key, source)
    return cls(**values)


def _check_type(value: Any, expected: Any, key: str, source: str) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    origin = getattr(expected, "__origin__", None)
    if origin is list:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
    elif isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(
        _("'{key}' in {source} must be of type {type}, got {value!r}").format(
            key=key, source=source, type=getattr(expected, "__name__", str(expected)), value=value
        )
    )


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``config`` with ``{"section.key": value}`` overrides applied; None values are skipped."""
    data = config.to_dict()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        data[section][key] = value
    return Config.from_dict(data, source="command-line flags")
