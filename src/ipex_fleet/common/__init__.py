"""Standard-library-only modules that the host side and the controller both use: errors, redaction, atomic files,
waiting, JUnit."""
