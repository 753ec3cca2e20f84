"""moto's AWS emulator as a WSGI app, for gunicorn (keep-alive TLS; moto_server closes every
connection). One worker: moto keeps its state in process memory."""
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
