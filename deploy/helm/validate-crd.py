"""Validates manifests against a JSON schema (for CRD kinds that
kubernetes-validate has no schema for). Usage: validate-crd.py SCHEMA FILE..."""
import json
import sys

import jsonschema
import yaml

schema = json.load(open(sys.argv[1]))
jsonschema.Draft7Validator.check_schema(schema)
validator = jsonschema.Draft7Validator(schema)
failed = False
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            where = ".".join(str(p) for p in err.absolute_path) or "(root)"
            print(f"{path}: {where}: {err.message}", file=sys.stderr)
            failed = True
sys.exit(1 if failed else 0)
