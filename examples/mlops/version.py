"""Step 2, version: give the ingested data a content-addressed version.

The version is a sha256 over the three split files, so the same data always
gets the same version and any change to it (other seed, other source file,
simulated drift) gets a new one.  Models record it, which lets anyone trace
a registered model back to exactly the data it was trained on.
"""

import hashlib

import common

FILES = ["train.csv", "test.csv", "batch.csv"]


def main():
    files = {}
    for name in FILES:
        with open(common.upstream_path("ingest", name), "rb") as f:
            data = f.read()
        files[name] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "rows": data.count(b"\n") - 1,  # minus the header line
        }

    full = common.content_version(
        {name: info["sha256"] for name, info in files.items()}
    )
    short = full[:12]
    common.write_json(
        common.out_path("version.json"),
        {"data_version": short, "sha256": full, "files": files},
    )
    for name in FILES:
        info = files[name]
        print(f"{name:10} {info['rows']:4} rows  sha256 {info['sha256'][:12]}")
    print(f"data version {short}")
    common.write_outputs({"data_version": short})


if __name__ == "__main__":
    common.run_step(main)
