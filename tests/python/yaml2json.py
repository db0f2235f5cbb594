#!/usr/bin/env python3
"""Print YAML files as one JSON object {path: content}, for the deploy tests."""
import json
import sys

import yaml

print(json.dumps({p: yaml.safe_load(open(p, encoding="utf-8")) for p in sys.argv[1:]}))
