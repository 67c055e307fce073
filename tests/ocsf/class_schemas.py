#!/usr/bin/env python3
"""Prints the JSON Schema of OCSF event classes, generated from the published OCSF schema.

Usage: class_schemas.py VERSION PROFILES CLASS_UID...
  VERSION   an OCSF version, e.g. 1.5.0
  PROFILES  comma-separated OCSF profiles whose attributes are allowed, e.g. container,host
Prints one JSON object: {"<class_uid>": <JSON Schema (draft 2020-12)>, ...}.

The schema data is the export of schema.ocsf.io for that version, as packaged by the PyPI
package `ocsf-json-schema` (installed by `cargo xtask setup`), which also turns it into JSON
Schema: every attribute of the class and of the objects it uses, with its type, requirement
and enumeration, `additionalProperties: false`, and the at_least_one / just_one constraints.
Nothing here is written by hand.
"""
import json
import sys

try:
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema
except ImportError:
    sys.exit("the Python package ocsf-json-schema is missing: run `cargo xtask setup` "
             "(or `python3 -m pip install ocsf-json-schema`)")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    version, profiles, uids = sys.argv[1], sys.argv[2], sys.argv[3:]
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
    profiles = [p for p in profiles.split(",") if p]
    out = {}
    for uid in uids:
        name = schema.lookup_class_name_from_uid(int(uid))
        out[uid] = schema.get_class_schema(name, profiles=profiles)
    json.dump(out, sys.stdout)


main()
