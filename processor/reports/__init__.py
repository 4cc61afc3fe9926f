"""The reports: built from a night's decisions and rendered through the templates."""
