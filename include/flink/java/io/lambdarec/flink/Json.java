package io.lambdarec.flink;

/** JSON text written by hand for the hot path: strings (escaped per RFC 8259) and lists. */
final class Json {

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    private Json() {}

    /** A JSON string literal, or null. */
    static void string(StringBuilder out, String s) {
        if (s == null) {
            out.append("null");
            return;
        }
        out.append('"');
        for (int i = 0, n = s.length(); i < n; i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append("\\u00").append(HEX[c >> 4]).append(HEX[c & 0xF]);
            } else {
                out.append(c);
            }
        }
        out.append('"');
    }

    /** A JSON array of strings. */
    static void strings(StringBuilder out, String[] list) {
        out.append('[');
        for (int i = 0; i < list.length; i++) {
            if (i > 0) {
                out.append(',');
            }
            string(out, list[i]);
        }
        out.append(']');
    }
}
