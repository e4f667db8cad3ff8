"""inpaintd's daemon side: the job queue, the engines and the command-line tool."""

__version__ = "0.1.0"
