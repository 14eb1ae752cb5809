"""potstill: distil many-step diffusion and flow-matching teachers into one-step and few-step generators.

The built-in objectives, adversaries, engines, backbones, modalities and data sources register the first
time any registry is read, so a config can name any of them while `import potstill` (and `potstill --help`)
stays free of torch."""

from potstill.core.registry import on_first_lookup

__version__ = "0.1.0"


def import_builtins() -> None:
    """Import every built-in component module, which registers it, then the installed packages' plugins (entry
    point group `potstill.plugins`)."""
    from potstill import backbones, modalities  # noqa: F401
    from potstill.core import (  # noqa: F401
        adversarial,
        causal_student,
        deepspeed_engine,
        diffusers_teacher,
        diffusers_vae,
        engine,
        from_teacher,
        objectives,
        teacher_file,
    )
    from potstill.core.plugins import load_entry_point_plugins
    from potstill.data import digits, moving_digits, shapes3d, tones, webdataset_source  # noqa: F401
    from potstill.modalities import audio, audio_codecs, field_generator, text_to_3d, video  # noqa: F401
    load_entry_point_plugins()


on_first_lookup(import_builtins)

__all__ = ["__version__", "import_builtins"]
