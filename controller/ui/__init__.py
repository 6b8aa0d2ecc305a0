"""The web console under ``/ui/``: the estate at a glance, live, in a browser.

Server-side pages (Jinja2 templates in ``templates/``) and one small plain-JavaScript file
(``static/console.js``): no build toolchain, nothing to install but the Python package. Every read page
works without JavaScript; the script only applies live updates from a server-sent event stream.

It is a thin face over the API: each page is made of in-process calls to the API's own handlers
(``controller.ui.calls``), with the caller's session as the bearer credential, so the console shows exactly
what the API would show that person (same roles, same per-cluster filtering, same dry-run plans as
``virtplane diff``), and its two actions (migrate, snapshot revert) are the API writes the CLI makes,
audited the same way. It never edits specs: those belong in Git.

Routes (``controller.ui.app``)::

    GET  /ui/login  POST /ui/login  POST /ui/logout        directory login; session cookie (HttpOnly,
                                                           SameSite=Strict, Secure over HTTPS)
    GET  /ui/                                              clusters at a glance
    GET  /ui/{plural}/?labelSelector=&page=&limit=         a kind's objects, paged on the server
    GET  /ui/{plural}/{name}                               one object: status, conditions, YAML, events
    GET  /ui/events?correlationId=&for=Kind/name           events
    GET  /ui/diff  POST /ui/diff                           the plan of a pasted change (dry run)
    POST /ui/virtualmachines/{name}/migrate                create a Migration (like `virtplane migrate`)
    POST /ui/snapshots/{name}/revert                       request a revert (like `virtplane snapshot revert`)
    GET  /ui/stream?kinds=&resourceVersion=                server-sent events from the watch stream

Every POST but the login carries a CSRF token derived from the session (``controller.ui.session``).
"""
