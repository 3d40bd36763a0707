"""Run moto's S3 server with SigV4 checked correctly for query strings.

moto 5 checks signatures against the request URL as Werkzeug rebuilds it, where `%2F` and
`%3A` in query values come back decoded (`prefix=app/` instead of `prefix=app%2F`); the
canonical request then differs from the one the client signed, and every listing with a
`/` in its prefix fails with SignatureDoesNotMatch. This launcher hands moto the raw request
URI instead (what the client signed), then starts `moto_server` with the usual arguments:

    INITIAL_NO_AUTH_ACTION_COUNT=3 python3 scripts/moto_server_sigv4.py -H 127.0.0.1 -p PORT
"""

import sys
from urllib.parse import urlparse

from moto.core.responses import BaseResponse

_setup_class = BaseResponse.setup_class


def _setup_class_with_raw_uri(self, request, full_url, headers, *args, **kwargs):
    _setup_class(self, request, full_url, headers, *args, **kwargs)
    environ = getattr(request, "environ", None) or {}
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw and raw.startswith("/"):
        parsed = urlparse(full_url)
        self.uri = f"{parsed.scheme}://{parsed.netloc}{raw}"


BaseResponse.setup_class = _setup_class_with_raw_uri

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
