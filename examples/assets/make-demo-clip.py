#!/usr/bin/env python3
"""Synthesise the loopback demo's built-in clip: 8 s of a plucked C-major arpeggio over a soft
pad, stereo 44.1 kHz, then encode it to mp3 with ffmpeg. Deterministic: no randomness.
Run from this folder: python3 make-demo-clip.py  (needs ffmpeg)."""
import math, struct, subprocess, wave

RATE, SECONDS = 44100, 8.0
NOTES = [0, 4, 7, 12, 16, 12, 7, 4]           # semitones above C4, one per eighth note
BASE = 261.63
STEP = 0.25                                   # seconds per note

frames = []
for i in range(int(RATE * SECONDS)):
    t = i / RATE
    k = int(t / STEP)
    note = NOTES[k % len(NOTES)] + (5 if (k // 16) % 2 else 0)   # up a fourth every 4 s
    f = BASE * 2 ** (note / 12)
    dt = t - k * STEP
    pluck = math.exp(-6 * dt) * (math.sin(2 * math.pi * f * t) + 0.3 * math.sin(4 * math.pi * f * t))
    pad = 0.15 * (math.sin(2 * math.pi * BASE / 2 * t) + math.sin(2 * math.pi * BASE * 0.75 * t))
    fade = min(1.0, t / 0.05, (SECONDS - t) / 0.3)
    pan = 0.5 + 0.4 * math.sin(2 * math.pi * t / 4)
    left = 0.5 * fade * (pluck * (1 - pan) + pad)
    right = 0.5 * fade * (pluck * pan + pad)
    frames.append(struct.pack('<hh', int(left * 32767), int(right * 32767)))

with wave.open('demo.wav', 'wb') as w:
    w.setnchannels(2); w.setsampwidth(2); w.setframerate(RATE)
    w.writeframes(b''.join(frames))
subprocess.run(['ffmpeg', '-y', '-loglevel', 'error', '-i', 'demo.wav', '-codec:a', 'libmp3lame',
                '-b:a', '128k', '-metadata', 'title=earshot demo: C-major arpeggio',
                'earshot-demo.mp3'], check=True)
