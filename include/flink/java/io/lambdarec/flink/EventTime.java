package io.lambdarec.flink;

import java.time.Instant;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * The event time of an event's JSON (its top-level "ts" in the contract's format), or NULL: the
 * source table's computed rowtime column, which its watermark follows.
 *
 * <p>A streaming scan that stops at "ts" (no tree is built): it runs on every record before
 * {@link ParseEvent} checks the whole event, so it must be cheap. A NULL falls back to the Kafka
 * record's timestamp in the SQL (the event is dead-lettered by ParseEvent anyway).
 */
public class EventTime extends ScalarFunction {

    private static final JsonFactory FACTORY = new JsonFactory();

    public @DataTypeHint("TIMESTAMP_LTZ(3)") Instant eval(String raw) {
        if (raw == null) {
            return null;
        }
        try (JsonParser parser = FACTORY.createParser(raw)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            JsonToken token;
            while ((token = parser.nextToken()) == JsonToken.FIELD_NAME) {
                String name = parser.currentName();
                JsonToken value = parser.nextToken();
                if ("ts".equals(name)) {
                    return value == JsonToken.VALUE_STRING ? ParseEvent.parseTs(parser.getText()) : null;
                }
                if (value == JsonToken.START_OBJECT || value == JsonToken.START_ARRAY) {
                    parser.skipChildren();
                }
            }
            return null;
        } catch (Exception e) {
            return null;
        }
    }
}
