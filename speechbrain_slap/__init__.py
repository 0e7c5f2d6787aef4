"""speechbrain-slap: SLAP (Scalable Language-Audio Pretraining) for SpeechBrain."""

__version__ = "0.1.0"
