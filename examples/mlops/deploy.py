"""Step 6, deploy: promote the newly registered version to production.

"Production" is the file <registry>/mlops/production.json, which names the
version that serving should load.  It is replaced atomically (written to a
temporary file, then os.replace), so a reader sees either the old pointer or
the new one, never a half-written file.
"""

import json
import os

import common


def main():
    registered = common.read_json(common.upstream_path("register", "registered.json"))
    version = registered["version"]
    models_dir = common.registry_dir()
    version_dir = os.path.join(models_dir, f"v{version}")
    if not os.path.isfile(os.path.join(version_dir, "model.json")):
        raise common.StepError(
            f"version v{version} is not in the registry ({version_dir})"
        )

    pointer_path = os.path.join(models_dir, "production.json")
    previous = None
    if os.path.isfile(pointer_path):
        previous = common.read_json(pointer_path).get("version")

    pointer = {
        "version": version,
        "model": os.path.join(version_dir, "model.json"),
        "previous_version": previous,
        "deployed_at": common.utc_now(),
        "run_id": common.require_env("SLUICE_RUN_ID"),
    }
    tmp_path = f"{pointer_path}.tmp-{os.getpid()}"
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump(pointer, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_path, pointer_path)

    before = f"v{previous}" if previous is not None else "(none)"
    print(f"production: {before} -> v{version}")
    print(f"pointer written to {pointer_path}")
    common.write_outputs(
        {
            "deployed_version": version,
            "previous_version": "" if previous is None else previous,
        }
    )


if __name__ == "__main__":
    common.run_step(main)
