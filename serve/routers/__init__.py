"""The API's routers: analysis, models, health, and the web page with its documentation pages."""
