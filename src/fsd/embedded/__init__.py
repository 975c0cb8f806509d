"""Servers a backend can start on this machine when none is configured (``fsd run`` without a
server, tests, the local stack): one module per backend, named by its class's ``EMBEDDED`` and
imported only when one is started (:func:`fsd.channels.resolve`, :func:`fsd.store.embedded`).
Each module holds its server's class (a :class:`fsd.services.Server`) and the context manager
that starts it.

They need the ``embedded`` extra; the runtime (functions, the operator, the Lambda handlers)
never imports this package, and no channel or store module does: the process management they
share is :mod:`fsd.services`.
"""
