"""Generated from protos/routeplane/admin/v1/admin.proto by `make protos`."""
