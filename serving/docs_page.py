"""The API documentation page at ``GET /``: nextbest's own, instead of BentoML's default.

BentoML's page is titled "BentoML Prediction Service", loads Google Tag Manager and carries a
GitHub badge. A decision service inside a company's network should not call a third party from
its documentation page, and its title should say what it is. This page uses the Swagger UI files
BentoML already serves (``/static_content/``, local) and reads the published document
(``/docs.json``, see ``serving.schemas.publish``); nothing is loaded from elsewhere.
"""

from __future__ import annotations

import html

from nextbest.serving.schemas import API_TITLE, release

PATHS = ("/",)


def index_html() -> bytes:
    title = html.escape(f"{API_TITLE} {release()}")
    return f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>{title}</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <link rel="icon" href="data:," />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script>
      window.onload = function () {{
        window.ui = SwaggerUIBundle({{url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true,
                                     presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"}});
      }};
    </script>
  </body>
</html>
""".encode()


async def serve_index(send) -> None:
    body = index_html()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-cache")]})
    await send({"type": "http.response.body", "body": body})
