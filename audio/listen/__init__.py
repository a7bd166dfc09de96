"""Listening in a voice channel, without Discord types: RTP packets → one member's utterances → wake phrases.

`rtp` parses and transport-decrypts packets (and opens DAVE frames with a given decryptor), `jitter` puts one
sender's packets back in order, `opus` decodes them to 16 kHz mono, `vad` tells speech from silence, `segmenter`
cuts utterances, `stream` ties these together per member, `wake` finds the wake phrase in a transcript.
"""
