"""Write one stage's run config (validated by the training dataclasses) as YAML.

    python -m pipeline.write_run_config --json '<run config as JSON>' --out run_config.yaml

The Snakefile passes the resolved sub-tree as a rule parameter, so editing a stage's
hyperparameters rewrites only that stage's file and reruns only its training.
"""

from __future__ import annotations

import argparse
import json
import sys

from stackgan.config import ConfigError, RunConfig, from_dict, to_dict
from stackgan.fileio import write_yaml


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.write_run_config", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--json", required=True, help="the run config (stage, model, loss, train) as a JSON object"
    )
    p.add_argument("--out", required=True, help="YAML file to write (atomically)")
    args = p.parse_args(argv)
    try:
        cfg = from_dict(RunConfig, json.loads(args.json))
    except (ConfigError, json.JSONDecodeError) as err:
        print(f"write_run_config: {err}", file=sys.stderr)
        return 2
    write_yaml(args.out, to_dict(cfg))
    print(f"wrote {args.out} (stage {cfg.stage}, arch {cfg.model.arch})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
