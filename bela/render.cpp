// mlmlmlm on the board: six EMG sensors on Bela's analog inputs 0-5, served to pybela as the
// Watcher<float> variables emg1..emg6, one value per analog frame (22050 Hz with 8 analog
// channels); or, built with MLMLMLM_INTERLEAVED=1, as one variable "emg" of 8 values per frame
// (emg1..emg6, then two zeros), whose 1024-value buffers hold 128 frames: 5.8 ms of EMG a
// buffer instead of 46 ms (the low-latency layout; the host finds it by itself). Build and run:
// see README.md beside this file. The host side is notebook 06_live_demo (pybela.Streamer;
// without a board, mlmlmlm.live.emulator speaks the same protocol, --interleaved for this one).
#include <Bela.h>
#include <Watcher.h> // Watcher.h + Watcher.cpp copied into this project (README.md)

#ifndef MLMLMLM_INTERLEAVED
#define MLMLMLM_INTERLEAVED 0
#endif

static constexpr unsigned int kNumEmg = 6;
#if MLMLMLM_INTERLEAVED
// One variable, kSlots values per analog frame (channels first): a dense buffer of 1024 values
// is 128 whole frames, stamped with the analog frame of its first value.
static constexpr unsigned int kSlots = 8;
Watcher<float> emg("emg", WatcherManager::kTimestampBlock);
#else
// Channel names as the host expects them (mlmlmlm's emg1..emg6), registered in this order, so
// the watcher's buffer ids 0..5 are emg1..emg6. Dense ("block") timestamps: one uint64 per
// 1024-value buffer, the analog frame of its first value.
Watcher<float> emg1("emg1", WatcherManager::kTimestampBlock);
Watcher<float> emg2("emg2", WatcherManager::kTimestampBlock);
Watcher<float> emg3("emg3", WatcherManager::kTimestampBlock);
Watcher<float> emg4("emg4", WatcherManager::kTimestampBlock);
Watcher<float> emg5("emg5", WatcherManager::kTimestampBlock);
Watcher<float> emg6("emg6", WatcherManager::kTimestampBlock);
static Watcher<float>* gEmg[kNumEmg] = {&emg1, &emg2, &emg3, &emg4, &emg5, &emg6};
#endif

// Analog input pin of each channel, in the corpus's placement order: emg1 right latissimus
// dorsi, emg2 right wrist flexors, emg3 left wrist flexors, emg4 left wrist extensors, emg5
// right deltoid, emg6 left biceps (mlmlmlm.data.synth.emg.CHANNELS).
static const unsigned int kEmgPin[kNumEmg] = {0, 1, 2, 3, 4, 5};

// Bela's ADC reads 0..4.096 V as 0..1. A BITalino EMG sensor on 3.3 V outputs 1.65 V at rest
// and spans 0..3.3 V for -1.65..+1.65 mV at the electrodes. With kCorpusUnits the board sends
// what the book's corpus stores (1.0 = 1.65 mV, 0 at rest); without it, raw analogRead values.
static constexpr bool kCorpusUnits = true;
static constexpr float kAdcFullScaleV = 4.096f;
static constexpr float kSensorMidV = 1.65f;

bool setup(BelaContext* context, void* userData)
{
	if(context->analogInChannels < kNumEmg) {
		fprintf(stderr, "mlmlmlm: needs %u analog inputs, the board runs %u (set -C 8)\n",
			kNumEmg, context->analogInChannels);
		return false;
	}
	// The websocket server pybela connects to: ws://<board>:5555/gui_control and /gui_data.
	Bela_getDefaultWatcherManager()->getGui().setup(context->projectName);
	// The rate the watcher reports to pybela ("sampleRate" in its list reply) must be the rate
	// at which tick() is called below: the analog rate. (pybela's own examples pass
	// audioSampleRate, which reports twice the true rate of analog-rate variables.)
	Bela_getDefaultWatcherManager()->setup(context->analogSampleRate);
	printf("mlmlmlm: streaming %u EMG channels at %.2f Hz (audio %.0f Hz, block %u frames, %s)\n",
	       kNumEmg, context->analogSampleRate, context->audioSampleRate, context->analogFrames,
	       MLMLMLM_INTERLEAVED ? "interleaved: 128-frame buffers" : "one variable a channel");
	return true;
}

void render(BelaContext* context, void* userData)
{
	// Analog frames elapsed before this block; audio and analog blocks cover the same time,
	// so scale the audio count (multiply first: analogFrames may exceed audioFrames).
	uint64_t frame0 = context->audioFramesElapsed * context->analogFrames / context->audioFrames;
	for(unsigned int n = 0; n < context->analogFrames; ++n) {
		// One tick per analog frame, before the values of that frame are set: the timestamps
		// pybela receives count analog frames.
		Bela_getDefaultWatcherManager()->tick(frame0 + n);
		for(unsigned int c = 0; c < kNumEmg; ++c) {
			float v = analogRead(context, n, kEmgPin[c]);
			if(kCorpusUnits)
				v = (v * kAdcFullScaleV - kSensorMidV) / kSensorMidV;
#if MLMLMLM_INTERLEAVED
			emg = v; // each assignment appends one value to the variable's buffer
#else
			*gEmg[c] = v;
#endif
		}
#if MLMLMLM_INTERLEAVED
		for(unsigned int c = kNumEmg; c < kSlots; ++c)
			emg = 0.f; // the spare slots keep every frame kSlots values long
#endif
	}
}

void cleanup(BelaContext* context, void* userData)
{
}
