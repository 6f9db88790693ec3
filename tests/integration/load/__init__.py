"""Load reporting (LRS) and cold starts through real Envoys and real ``serve``: known load, known
answer; hostile reporters; hold- and reject-mode cold starts."""
