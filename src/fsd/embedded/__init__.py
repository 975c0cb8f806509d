"""Servers a transport can start on this machine when none is configured (``fsd run`` without
``--nats-url``, tests, the local stack): one module per transport, named by its class's
``EMBEDDED`` and imported only when one is started (:func:`fsd.channels.resolve`).

They need the ``embedded`` extra (nats-server, SeaweedFS, moto); the runtime (functions, the
operator, the Lambda handlers) never imports this package, and no channel module does: the
process management is :mod:`fsd.services`.
"""
