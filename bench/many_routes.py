#!/usr/bin/env python3
"""Writes a routes.yaml of N routes, as a large installation might have.

    many_routes.py N API_URL STORE_PATH > routes.yaml

Routes cycle through the ways senders sign; some have `when`, a rate limit,
debounce or `allowed_repos`; most have one target, some three, a few twelve,
and every seventh starts with a workflow dispatch. Each route's templates
differ from the others' (its number is in them), as they do when each
route belongs to a different site.
"""
import base64
import sys

count, api_url, store = int(sys.argv[1]), sys.argv[2], sys.argv[3]
standard_secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
verify = [
    lambda i: f'    verify:\n      hmac:\n        secret: sec{i}\n        header: X-Signature-256\n'
    f'        algorithm: sha256\n        encoding: hex\n        prefix: "sha256="\n',
    lambda i: f"    verify:\n      github:\n        secret: sec{i}\n",
    lambda i: f"    verify:\n      token:\n        header: X-Token\n        value: tok{i}\n",
    lambda i: f"    verify:\n      basic:\n        username: u{i}\n        password: pw{i}\n",
    lambda i: f"    verify:\n      standard_webhooks:\n        secret: {standard_secret}\n",
    lambda i: "    verify: none\n",
]
out = [
    f"github:\n  api_url: {api_url}\n  token: ghp_bench\n  pacing: off\n",
    f"store:\n  url: sqlite:{store}\n",
    "routes:\n",
]
for i in range(count):
    out.append(f"  - id: r{i:05d}\n")
    out.append(verify[i % len(verify)](i))
    if i % 5 == 0:
        out.append("    rate_limit: { per_second: 50, burst: 100 }\n")
    if i % 4 == 0:
        out.append(f'    when: body.event in ["publish{i}", "entry.publish"]\n')
    if i % 10 == 3:
        out.append(f'    allowed_repos: ["org{i % 50}/*"]\n')
    if i % 17 == 0:
        out.append("    debounce: { window: 30s, max_wait: 5m }\n")
    out.append("    dispatch:\n")
    targets = 12 if i % 50 == 7 else 3 if i % 4 == 1 else 1
    for t in range(targets):
        if i % 10 == 3 and t == 0:
            out.append(f"      - repo: \"org{i % 50}/{{{{ body.site | default('site{i}') }}}}\"\n")
        else:
            out.append(f"      - repo: org{i % 50}/repo{i}-{t}\n")
        if i % 7 == 2 and t == 0:
            out.append(
                f"        workflow: deploy{i}.yml\n"
                f"        ref: \"{{{{ query.ref | default('main') }}}}\"\n"
                f"        inputs:\n          env: prod{i}\n"
                f"          version: \"{{{{ body.version | default('v{i}') }}}}\"\n"
            )
            continue
        out.append(
            f"        event_type: ev{i}-{{{{ body.model | default('m') }}}}\n"
            f"        client_payload:\n"
            f"          model: \"{{{{ body.model }}}}\"\n"
            f"          entry: \"{{{{ body.entry }}}}\"\n"
            f"          tag: \"t{i}-{{{{ route }}}}-{{{{ delivery.id }}}}\"\n"
            f"          n: \"{{{{ (body.n | default(0)) + {i} }}}}\"\n"
        )
sys.stdout.write("".join(out))
