"""Protocol faces in plain Python: protocol messages <-> `Graph` calls, each face's error mapping in one place."""
