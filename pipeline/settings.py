"""Pipeline configuration: preset merging, semantic checks, per-stage run configs, paths.

The Snakefile calls :func:`resolve` once; everything a rule needs comes from the
returned :class:`Settings`. All checks here run when the workflow is parsed, so a bad
configuration fails before any job is submitted, with a message naming the key.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stackgan.config import ConfigError, EvalConfig, RunConfig, from_dict, to_dict

PIPELINE_DIR = Path(__file__).resolve().parent
PRESET_DIR = PIPELINE_DIR / "config" / "presets"
BASE_CONFIG = PIPELINE_DIR / "config" / "base.yaml"
SCHEMA = PIPELINE_DIR / "schemas" / "config.schema.yaml"
REQUIRED_CUB_FILES = ("images.txt", "bounding_boxes.txt")
REQUIRED_BUNDLE_FILES = tuple(
    f"{split}/{name}"
    for split in ("train", "test")
    for name in ("filenames.pickle", "class_info.pickle", "char-CNN-RNN-embeddings.pickle")
)


class PipelineConfigError(ValueError):
    """The pipeline configuration is unusable (raised while the workflow is parsed)."""


def available_presets() -> list[str]:
    """Names of the files in ``pipeline/config/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (override wins)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise PipelineConfigError(f"{path.name}: expected a mapping at the top level")
    return data


def merge_with_preset(user: dict[str, Any]) -> dict[str, Any]:
    """``base.yaml``, then the preset named by ``user['preset']`` (default demo), then ``user``,
    each deep-merged over the previous one (a preset states only what differs from base)."""
    name = user.get("preset", "demo")
    presets = available_presets()
    if name not in presets:
        raise PipelineConfigError(
            f"preset: unknown preset {name!r}; available: {', '.join(presets)}"
        )
    base = _read_yaml_mapping(BASE_CONFIG)
    preset = _read_yaml_mapping(PRESET_DIR / f"{name}.yaml")
    return deep_merge(deep_merge(base, preset), user)


def _load_schema() -> dict[str, Any]:
    with open(SCHEMA, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _deref(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` ("#/$defs/...") replaced by its target (siblings kept)."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


_NULL_WORDS = ("null", "Null", "NULL", "~")


def _typed_scalar(text: str, node: dict[str, Any]) -> Any:
    """``text`` (a string from ``--config``) as the non-string scalar ``node`` asks for, or
    ``text`` unchanged when it does not parse as one of the allowed types."""
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    enum = node.get("enum")
    if enum is not None:
        if text in enum:
            return text
        candidates = [v for v in enum if not isinstance(v, str)]
    elif "string" in types:
        # A nullable string: only the YAML null words mean None.
        return None if "null" in types and text in _NULL_WORDS else text
    else:
        candidates = None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # e.g. "1e-4" (YAML 1.1 floats need a dot)
        try:
            value = float(text)
        except ValueError:
            return text
    if candidates is not None:
        return value if value in candidates and not isinstance(value, str) else text
    ok = {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "null": value is None,
    }
    return value if any(ok.get(t, False) for t in types) else text


def coerce_cli_strings(config: Any, schema: dict[str, Any] | None = None, node: Any = None) -> Any:
    """Give ``--config`` values their YAML types where the schema expects non-strings.

    Snakemake parses a nested ``--config`` value such as ``stage1={epochs: 60}`` or
    ``stages=[2]`` with YAML's BaseLoader, so every nested scalar arrives as a string
    (``'60'``, ``['2']``). Strings at places where the schema allows no string are parsed
    as YAML scalars; anything that does not parse to an allowed type is left as it is (the
    schema check then names it). Returns the converted copy.
    """
    if schema is None:
        schema = _load_schema()
        node = schema
    node = _deref(node or {}, schema)
    if isinstance(config, dict):
        props = node.get("properties", {})
        return {k: coerce_cli_strings(v, schema, props.get(k)) for k, v in config.items()}
    if isinstance(config, list):
        return [coerce_cli_strings(v, schema, node.get("items")) for v in config]
    if isinstance(config, str) and node:
        return _typed_scalar(config, node)
    return config


def schema_errors(config: dict[str, Any]) -> list[str]:
    """JSON-Schema (Draft 2020-12) errors of ``config``, each naming the key path."""
    import jsonschema

    schema = _load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        errors.append(f"{where}: {err.message}")
    return errors


def stage_run_config(config: dict[str, Any], stage: int) -> dict[str, Any]:
    """The run config of one stage (validated by the training dataclasses), as a dict:
    ``stage<N>`` overrides ``train``, and its ``loss`` sub-section overrides ``loss``; the
    options only Stage-II reads stay at their defaults in Stage-I's (``RunConfig.for_its_stage``),
    so that changing one reruns Stage-II alone."""
    overrides = dict(config.get(f"stage{stage}") or {})
    loss_overrides = overrides.pop("loss", None) or {}
    loss = deep_merge(config.get("loss", {}), loss_overrides)
    raw = {
        "stage": stage,
        "model": config.get("model", {}),
        "loss": loss,
        "train": deep_merge(config.get("train", {}), overrides),
    }
    try:
        return to_dict(from_dict(RunConfig, raw).for_its_stage())
    except ConfigError as err:
        where = ""
        if str(err).startswith("train"):
            where = f"train/stage{stage}"
        elif str(err).startswith("loss") and loss_overrides:
            where = f"loss/stage{stage}.loss"
        raise PipelineConfigError(f"{where + ': ' if where else ''}{err}") from err


@dataclass(frozen=True)
class Settings:
    """Resolved, checked pipeline settings."""

    config: dict[str, Any]
    run_dir: str  # <results_dir>/<run>
    data_dir: str  # <results_dir>/data/<dataset>-<data key> (see data_identity)
    run_configs: dict[int, dict[str, Any]]
    eval: EvalConfig  # the validated eval section (rules read it; no defaults of their own)

    @property
    def stages(self) -> list[int]:
        return sorted(self.config["stages"])

    @property
    def eval_stages(self) -> list[int]:
        return sorted(s for s in self.eval.stages if s in self.stages)

    @property
    def twin(self) -> bool:
        return self.config["data"]["source"] == "twin"

    @property
    def raw_root(self) -> str:
        return f"{self.data_dir}/raw" if self.twin else str(self.config["data"]["root"] or "")

    def cub_dir(self) -> str:
        d = self.config["data"]
        return d.get("cub_dir") or f"{self.raw_root}/CUB_200_2011"

    def bundle_dir(self) -> str:
        d = self.config["data"]
        return d.get("bundle_dir") or self.raw_root


def _check_cub_paths(config: dict[str, Any]) -> list[str]:
    d = config["data"]
    if d.get("root") is None and (d.get("cub_dir") is None or d.get("bundle_dir") is None):
        return [
            "data.root: required for data.source 'cub' (or give data.cub_dir and data.bundle_dir)"
        ]
    root = Path(d["root"]) if d.get("root") else None
    cub = Path(d.get("cub_dir") or root / "CUB_200_2011")  # type: ignore[operator]
    bundle = Path(d.get("bundle_dir") or root)  # type: ignore[arg-type]
    problems = []
    for base, names, key in (
        (cub, REQUIRED_CUB_FILES, "cub_dir"),
        (bundle, REQUIRED_BUNDLE_FILES, "bundle_dir"),
    ):
        if not base.is_dir():
            problems.append(f"data.{key}: directory {base} does not exist")
            continue
        problems += [f"data.{key}: missing {base / n}" for n in names if not (base / n).is_file()]
    if cub.is_dir() and not (cub / "images").is_dir():
        problems.append(f"data.cub_dir: missing {cub / 'images'}/")
    return problems


def _check_resources(config: dict[str, Any]) -> list[str]:
    res = config["resources"]
    problems = []
    for rule in ("train_stage1", "train_stage2"):
        r = res[rule]
        if r["gpus"] > res["gpus_per_node"]:
            problems.append(
                f"resources.{rule}.gpus: {r['gpus']} GPUs per node requested, "
                "but resources.gpus_per_node "
                f"(what one node of the profile's GPU partition has) is {res['gpus_per_node']}"
            )
        if r["gpus"] > 0 and r["ranks_per_node"] != r["gpus"]:
            problems.append(
                f"resources.{rule}.ranks_per_node: must equal gpus ({r['gpus']}) on GPU nodes "
                "(one rank per GPU)"
            )
    if res["evaluate"]["gpus"] > res["gpus_per_node"]:
        problems.append(
            f"resources.evaluate.gpus: {res['evaluate']['gpus']} > "
            f"resources.gpus_per_node {res['gpus_per_node']}"
        )
    return problems


def resolve(user: dict[str, Any]) -> Settings:
    """Merge the preset, validate everything and derive per-stage run configs.

    Raises:
        PipelineConfigError: listing every problem found, each naming its key.
    """
    config = coerce_cli_strings(merge_with_preset(user))
    problems = schema_errors(config)
    if problems:
        raise PipelineConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    stages = set(config["stages"])
    if 2 in stages and 1 not in stages and not config.get("stage1_generator"):
        problems.append(
            "stages: Stage-II needs Stage-I: add 1 to stages, "
            "or set stage1_generator to a Stage-I network file"
        )
    if config.get("stage1_generator") and 1 in stages:
        problems.append("stage1_generator: given, but stages also trains Stage-I; drop one of them")
    if config.get("stage1_generator") and not Path(config["stage1_generator"]).is_file():
        problems.append(f"stage1_generator: {config['stage1_generator']} does not exist")
    missing_eval = set(config["eval"]["stages"]) - stages
    if missing_eval:
        problems.append(
            f"eval.stages: {sorted(missing_eval)} not trained (stages is {sorted(stages)})"
        )
    if config["data"]["source"] == "cub":
        problems += _check_cub_paths(config)
    encoder = config["data"].get("text_encoder") or ""
    if encoder.startswith("char-cnn-rnn:"):
        weights = Path(encoder.partition(":")[2]).expanduser()
        if not weights.is_file():
            problems.append(f"data.text_encoder: {weights} does not exist (a converted file)")
        elif weights.suffix == ".t7":
            problems.append(
                f"data.text_encoder: {weights} is a .t7; convert it first "
                "(stackgan text-encoder convert --t7 FILE --out FILE.pt)"
            )
    if config["eval"].get("conditional_accuracy") and config["data"]["source"] != "twin":
        problems.append(
            "eval.conditional_accuracy: only defined for the synthetic twin (data.source: twin)"
        )
    problems += _check_resources(config)
    uses_monitor = any(
        (config.get(k) or {}).get("eval_every", 0) for k in ("train", "stage1", "stage2")
    )
    has_weights = bool((config.get("eval") or {}).get("inception_weights"))
    if uses_monitor and config["data"]["source"] != "twin" and not has_weights:
        raise PipelineConfigError(
            "train.eval_every: the in-training evaluation needs the twin attribute classifier "
            "(data.source: twin) or eval.inception_weights (a small-sample Inception FID); "
            "set it to 0 otherwise"
        )
    try:
        eval_cfg = from_dict(EvalConfig, config["eval"], prefix="eval")
    except ConfigError as err:
        problems.append(str(err))
    run_configs = {}
    for stage in sorted(stages):
        try:
            run_configs[stage] = stage_run_config(config, stage)
        except PipelineConfigError as err:
            problems.append(str(err))
    if problems:
        raise PipelineConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    results = config["results_dir"].rstrip("/")
    dataset = "twin" if config["data"]["source"] == "twin" else "cub"
    data_dir = f"{results}/data/{dataset}-{data_key(config)}"
    return Settings(config, f"{results}/{config['run']}", data_dir, run_configs, eval_cfg)


DATA_KEY_LEN = 10  # hex digits of the data identity's sha256 in the directory name


def data_identity(config: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines the bytes under the data directory.

    The source; for the twin its spec, for real CUB the absolute source paths (the
    validation report records their checksums); the shard settings; and, for the twin, the
    attribute classifier's settings (it lives beside the shards). Runs whose identities are
    equal share one data directory; any difference gives another, so nothing a run reads is
    ever rewritten by a run with other data settings.
    """
    d = config["data"]
    ident: dict[str, Any] = {"source": d["source"], "shards": dict(d["shards"])}
    encoder = d.get("text_encoder")
    if encoder:  # absent by default, so that the default keeps the keys it had
        name, _, path = encoder.partition(":")
        ident["text_encoder"] = f"{name}:{Path(path).expanduser().resolve()}" if path else name
    if d["source"] == "twin":
        ident["twin"] = dict(d["twin"])
        ident["attribute_classifier"] = {"epochs": config["eval"]["classifier_epochs"]}
    else:
        ident["paths"] = {
            k: str(Path(d[k]).expanduser().resolve()) if d.get(k) else None
            for k in ("root", "cub_dir", "bundle_dir")
        }
    return ident


def _identity_sha256(ident: dict[str, Any]) -> str:
    import hashlib
    import json

    canonical = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def data_key(config: dict[str, Any]) -> str:
    """The short hash of :func:`data_identity` that names the data directory."""
    return _identity_sha256(data_identity(config))[:DATA_KEY_LEN]


def write_data_config(
    config: dict[str, Any], path: str | Path, log: str | Path | None = None
) -> None:
    """Write the data directory's key, full hash and identity beside the data (atomically)."""
    from stackgan.fileio import write_json

    ident = data_identity(config)
    full = _identity_sha256(ident)
    write_json(path, {"key": full[:DATA_KEY_LEN], "sha256": full, "data": ident})
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(f"wrote {path} (data key {full[:DATA_KEY_LEN]})\n")


def write_run_config(
    run_config: dict[str, Any], path: str | Path, log: str | Path | None = None
) -> None:
    """Write one stage's run config (checked again by the training dataclasses) as YAML.

    Called by the workflow's ``write_run_config`` rule with the resolved sub-tree it holds, so
    editing a stage's hyperparameters rewrites only that stage's file and reruns only its
    training. The file is written atomically; ``log`` gets one line saying what was written.
    """
    from stackgan.fileio import write_yaml

    try:
        cfg = from_dict(RunConfig, copy.deepcopy(run_config))
    except ConfigError as err:
        raise PipelineConfigError(f"{path}: {err}") from err
    write_yaml(path, to_dict(cfg))
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(f"wrote {path} (stage {cfg.stage}, arch {cfg.model.arch})\n")


# Keys of the resolved config that describe a machine, not the experiment.
_NOT_PARAMS = ("results_dir",)


def pipeline_params(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved pipeline config as the parent run logs it (machine paths left out)."""
    return {k: copy.deepcopy(v) for k, v in config.items() if k not in _NOT_PARAMS}


def write_pipeline_config(
    params: dict[str, Any], path: str | Path, log: str | Path | None = None
) -> None:
    """Write the resolved pipeline config (:func:`pipeline_params`) atomically as YAML."""
    from stackgan.fileio import write_yaml

    write_yaml(path, params)
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(f"wrote {path} ({len(params)} sections)\n")


def prepare_rule_environment(source_dir: str, python: str | None) -> None:
    """Let rule shells run ``python -m stackgan ...`` from this source tree.

    Puts ``source_dir`` first on ``PYTHONPATH``; with ``python`` given (no conda), also puts
    that interpreter's directory first on ``PATH``. Jobs inherit the environment.
    """
    parts = [
        source_dir,
        *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != source_dir),
    ]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    if python is not None:
        bindir = os.path.dirname(python)
        rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bindir]
        os.environ["PATH"] = os.pathsep.join([bindir, *rest])
