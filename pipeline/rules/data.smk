# Raw data (synthetic twin or real CUB + birds bundle) -> validation report -> shards + index.
# DATA is <results_dir>/data/<dataset>-<key>: the key hashes every setting that determines
# these bytes (pipeline.settings.data_identity), so runs with other data settings never
# rewrite what another run reads; data_config.json beside the data says what the key covers.


rule write_data_config:
    output:
        f"{DATA}/data_config.json",
    log:
        f"{DATA}/logs/write_data_config.log",
    localrule: True
    run:
        write_data_config(config, output[0], log[0])


if S.twin:

    rule make_twin:
        output:
            f"{RAW}/twin.json",
        params:
            out=lambda w, output: os.path.dirname(output[0]),
            twin=config["data"]["twin"],
            sides=" ".join(
                f"--{k.replace('_', '-')} {config['data']['twin'][k]}"
                for k in ("min_side", "max_side")
                if k in config["data"]["twin"]
            ),
        log:
            f"{DATA}/logs/make_twin.log",
        threads: config["resources"]["preprocess"]["cpus"]
        resources:
            mem_mb=config["resources"]["preprocess"]["mem_mb"],
            runtime=config["resources"]["preprocess"]["runtime"],
        conda:
            CONDA_PRE
        shell:
            "python -m stackgan make-twin --out {params.out} --classes {params.twin[classes]} "
            "--images-per-class {params.twin[images_per_class]} --seed {params.twin[seed]} "
            "{params.sides} --workers {threads} 2>&1 | tee {log}"


rule validate_data:
    input:
        raw_inputs,
        data_config=rules.write_data_config.output[0],
    output:
        f"{DATA}/validation.json",
    params:
        paths=raw_data_args(),
        on_bad=config["data"]["shards"].get("on_bad_image", "error"),
    log:
        f"{DATA}/logs/validate_data.log",
    resources:
        mem_mb=config["resources"]["preprocess"]["mem_mb"],
        runtime=config["resources"]["preprocess"]["runtime"],
    conda:
        CONDA_PRE
    shell:
        "python -m stackgan validate-data {params.paths} --on-bad-image {params.on_bad} "
        "--report {output} > {log} 2>&1"


rule build_shards:
    input:
        rules.validate_data.output[0],
    output:
        lr=f"{SHARDS}/{{split}}-64/manifest.json",
        hr=f"{SHARDS}/{{split}}-256/manifest.json",
        index=f"{SHARDS}/{{split}}-index.h5",
    wildcard_constraints:
        split="train|test",
    params:
        paths=raw_data_args(),
        out=lambda w, output: os.path.dirname(output.index),
        opts=" ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(config["data"]["shards"].items())),
        encoder=(
            f"--text-encoder {shlex.quote(config['data']['text_encoder'])} "
            if config["data"].get("text_encoder")
            else ""
        ),
    log:
        f"{DATA}/logs/build_shards_{{split}}.log",
    threads: config["resources"]["preprocess"]["cpus"]
    resources:
        mem_mb=config["resources"]["preprocess"]["mem_mb"],
        runtime=config["resources"]["preprocess"]["runtime"],
    conda:
        CONDA_PRE
    shell:
        "python -m stackgan build-shards {params.paths} --out {params.out} --splits {wildcards.split} "
        "{params.opts} {params.encoder}--workers {threads} 2>&1 | tee {log}"
