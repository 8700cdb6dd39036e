"""Who may use the console and how it is protected: login, roles, CSRF, security headers."""
