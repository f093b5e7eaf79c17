"""`GET /graphql`: the GraphiQL IDE in development; outside it, the page does not exist (404).

The page loads GraphiQL from a CDN, sends every operation as a `POST` to `/graphql` on the same
origin, and opens the headers editor with an `Authorization: Bearer …` line to fill in.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse

# Pinned majors: GraphiQL 4+ and React 19 ship no UMD bundles, so unpinned URLs would break
# the page the day a new major is published.
GRAPHIQL_CDN = "https://unpkg.com/graphiql@3"
REACT_CDN = "https://unpkg.com/react@18/umd/react.production.min.js"
REACT_DOM_CDN = "https://unpkg.com/react-dom@18/umd/react-dom.production.min.js"

GRAPHIQL_HTML = f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>Loopify Messaging · GraphiQL</title>
    <style>
      body {{ margin: 0; }}
      #graphiql {{ height: 100vh; }}
    </style>
    <link rel="stylesheet" href="{GRAPHIQL_CDN}/graphiql.min.css" />
    <script crossorigin src="{REACT_CDN}"></script>
    <script crossorigin src="{REACT_DOM_CDN}"></script>
    <script crossorigin src="{GRAPHIQL_CDN}/graphiql.min.js"></script>
  </head>
  <body>
    <div id="graphiql">Loading GraphiQL…</div>
    <script>
      // POSTs JSON to this server's /graphql; headers typed in the editor are sent with it.
      const fetcher = GraphiQL.createFetcher({{ url: window.location.origin + "/graphql" }});
      ReactDOM.createRoot(document.getElementById("graphiql")).render(
        React.createElement(GraphiQL, {{
          fetcher,
          defaultHeaders: JSON.stringify({{ Authorization: "Bearer <token>" }}, null, 2),
          defaultEditorToolsVisibility: "headers",
          // A token typed here is not written to localStorage.
          shouldPersistHeaders: false,
          defaultQuery: "query Me {{\\n  viewer {{\\n    id\\n  }}\\n}}\\n",
        }}),
      );
    </script>
  </body>
</html>
"""


def graphiql_endpoint(enabled: bool) -> Any:
    async def page(_: Request) -> HTMLResponse:
        return HTMLResponse(GRAPHIQL_HTML)

    async def not_found(_: Request) -> HTMLResponse:
        # 404 rather than the router's 405 (POST /graphql exists): production does not even
        # hint that an IDE could be served here.
        raise HTTPException(status_code=404)

    return page if enabled else not_found
