package io.lambdarec.flink;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.data.TimestampData;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * The event time of an event's JSON (its top-level "ts" in the contract's format), or NULL: the
 * source table's computed rowtime column, which its watermark follows.
 *
 * <p>It runs on every record before {@link ParseEvent} checks the whole event, so it must be
 * cheap. The common case is found without a parser: the text's only {@code "ts"} key, with no
 * object or array opened before it (so it is top-level), followed by {@code :"} and the
 * timestamp. Anything else (no such key, two of them, nesting before it, spaces around the
 * colon, an invalid or escaped value) takes a streaming scan that stops at the top-level "ts"
 * (no tree is built). Neither checks the rest of the JSON: that is ParseEvent's job, and an event
 * it rejects only lends its time to the watermark. A time further in the future than the allowed
 * skew is NULL too: as the rowtime it would move the watermark ahead and make every later event
 * late; so is one before 2000 (the contract's range). A NULL falls back to the Kafka record's
 * timestamp in the SQL.
 */
public class EventTime extends ScalarFunction {

    private static final String KEY = "\"ts\"";

    public @DataTypeHint(value = "TIMESTAMP_LTZ(3)", bridgedTo = TimestampData.class)
            TimestampData eval(String raw, Long maxFutureSkewMs) {
        if (raw == null) {
            return null;
        }
        long ms = quick(raw);
        if (ms == Long.MIN_VALUE) {
            ms = scan(raw);
        }
        return ms == Long.MIN_VALUE || ParseEvent.outOfRange(ms, maxFutureSkewMs)
                ? null
                : TimestampData.fromEpochMillis(ms);
    }

    @Override
    public boolean isDeterministic() {
        return false; // the future check reads the wall clock
    }

    /** The time of the common layout; {@link Long#MIN_VALUE}: not that layout or not a valid
     *  time as written (e.g. escaped characters), so scan instead. */
    static long quick(String raw) {
        int key = raw.indexOf(KEY);
        if (key < 0 || raw.indexOf(KEY, key + KEY.length()) >= 0) {
            return Long.MIN_VALUE;
        }
        int open = 0;
        while (open < key && raw.charAt(open) <= ' ') {
            open++;
        }
        if (open >= key || raw.charAt(open) != '{') {
            return Long.MIN_VALUE;
        }
        for (int i = open + 1; i < key; i++) {
            char c = raw.charAt(i);
            if (c == '{' || c == '[') {
                return Long.MIN_VALUE; // maybe nested: let the parser decide
            }
        }
        int before = key - 1;
        while (raw.charAt(before) <= ' ') {
            before--;
        }
        char prev = raw.charAt(before);
        if (prev != '{' && prev != ',') {
            return Long.MIN_VALUE; // e.g. the end of a string value, not a key
        }
        int at = key + KEY.length();
        if (at + 26 >= raw.length()
                || raw.charAt(at) != ':'
                || raw.charAt(at + 1) != '"'
                || raw.charAt(at + 26) != '"') {
            return Long.MIN_VALUE;
        }
        return ParseEvent.parseTsMillis(raw, at + 2);
    }

    /** The general case: a streaming scan to the top-level "ts"; {@link Long#MIN_VALUE} when
     *  there is none or it is not a contract timestamp. */
    static long scan(String raw) {
        try (JsonParser parser = ParseEvent.FACTORY.createParser(raw)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return Long.MIN_VALUE;
            }
            JsonToken token;
            while ((token = parser.nextToken()) == JsonToken.FIELD_NAME) {
                String name = parser.currentName();
                JsonToken value = parser.nextToken();
                if ("ts".equals(name)) {
                    return value == JsonToken.VALUE_STRING
                            ? ParseEvent.tsMillis(parser.getText())
                            : Long.MIN_VALUE;
                }
                if (value == JsonToken.START_OBJECT || value == JsonToken.START_ARRAY) {
                    parser.skipChildren();
                }
            }
            return Long.MIN_VALUE;
        } catch (Exception e) {
            return Long.MIN_VALUE;
        }
    }
}
