#!/usr/bin/env python3
"""Fails on any dependency that runs against the project's layering.

The parts, lowest first (docs/ARCHITECTURE.md draws them):

    wire     proto/            the contract, generated code
    common   common/           what both sides need (knows the wire)
    rules    server/optimizer/ update kernels: flat arrays, their settings
                               (common/optimizer_settings.h) and nothing else
    server   server/           the shard
    client   client/           ps::Client, psctl, psclient

An arrow may point down only: common -> wire; rules -> the rule settings;
server -> rules, common, wire; client -> common, wire. A client never
reaches the server, common code never reaches either side, and the kernels
know neither the wire format nor the store.

Two kinds of arrows are read: the project's own #include lines of every
.h and .cc file in those folders (tests beside the code, *_test.cc, may
include what they test against), and the project's own libraries named in
each library's target_link_libraries in CMakeLists.txt. Prints each wrong
arrow and exits 1; prints a summary and exits 0 when there is none.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Folder -> layer; the longest matching prefix wins.
LAYERS = {
    "proto/": "wire",
    "common/": "common",
    "server/optimizer/": "rules",
    "server/": "server",
    "client/": "client",
}
# The one common header the kernels may read: their settings, plain data.
RULE_SETTINGS = {"common/optimizer_settings.h"}
RULE_SETTINGS_LIBRARY = "ps_rule_settings"

ALLOWED = {
    "wire": {"wire"},
    "common": {"wire", "common"},
    "rules": {"rules"},
    "server": {"wire", "common", "rules", "server"},
    "client": {"wire", "common", "client"},
}


def layer_of(path: str):
    best = None
    for prefix, layer in LAYERS.items():
        if path.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return best[1] if best else None


INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def include_violations():
    found = []
    checked = 0
    for folder in ("common", "server", "client"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".h", ".cc") or path.name.endswith("_test.cc"):
                continue
            rel = path.relative_to(ROOT).as_posix()
            source = layer_of(rel)
            checked += 1
            for target in INCLUDE.findall(path.read_text(encoding="utf-8")):
                target_layer = layer_of(target)
                if target_layer is None:
                    continue  # a library's header, or this file's own folder
                if source == "rules" and target in RULE_SETTINGS:
                    continue
                if target_layer not in ALLOWED[source]:
                    found.append(f"{rel} ({source}) includes {target} ({target_layer})")
    return found, checked


def cmake_commands(text: str, name: str):
    """The argument lists of every `name(...)` call in a CMakeLists text."""
    for match in re.finditer(rf"\b{name}\s*\(", text):
        depth, start = 1, match.end()
        i = start
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        body = re.sub(r"#[^\n]*", "", text[start:i - 1])
        yield body.split()


def link_violations():
    libraries = {}  # name -> layer of the folder that defines it
    lists = sorted(ROOT.rglob("CMakeLists.txt"))
    lists = [p for p in lists if not any(part.startswith("build") for part in p.parts)]
    texts = {p: p.read_text(encoding="utf-8") for p in lists}
    for path, text in texts.items():
        folder = path.parent.relative_to(ROOT).as_posix() + "/"
        for args in cmake_commands(text, "add_library"):
            if args:
                libraries[args[0]] = layer_of(folder)
    found = []
    for path, text in texts.items():
        for args in cmake_commands(text, "target_link_libraries"):
            if not args or args[0] not in libraries:
                continue
            source = libraries[args[0]]
            if source is None:
                continue  # tests, benchmarks, examples may use any part
            for dependency in args[1:]:
                if dependency not in libraries:
                    continue
                target = libraries[dependency]
                if source == "rules" and dependency == RULE_SETTINGS_LIBRARY:
                    continue
                if target is not None and target not in ALLOWED[source]:
                    found.append(f"{args[0]} ({source}) links {dependency} ({target})")
    return found, len(libraries)


def main() -> int:
    includes, files = include_violations()
    links, libraries = link_violations()
    for line in includes + links:
        print("wrong way:", line)
    if includes or links:
        print(f"{len(includes) + len(links)} dependencies run against the layering "
              "(scripts/check_layering.py says which way each part may point)")
        return 1
    print(f"layering holds: {files} files' includes and {libraries} libraries' links")
    return 0


if __name__ == "__main__":
    sys.exit(main())
