"""The HTTP server the local stand-ins (tools/lambda_local.py, tools/github_standin.py) share."""
import sys
from http.server import ThreadingHTTPServer


class QuietThreadingHTTPServer(ThreadingHTTPServer):
    """A threading server that does not print a traceback when a client goes away mid
    keep-alive (a function process that was stopped): that is not an error of the server."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)
