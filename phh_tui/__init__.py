"""phh front ends: the `phh` CLI and the Textual dashboard."""
