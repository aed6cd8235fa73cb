// See chatserver.h for what is the article's and what was added.
#include "chatserver.h"

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QUrlQuery>
#include <QtGlobal>

ChatServer::ChatServer(const QHostAddress &host, quint16 port, const QSslConfiguration *ssl,
                       bool verbose, QObject *parent)
    : QObject(parent), verbose(verbose)
{
    // The article: NonSecureMode. Added: SecureMode when a certificate is given.
    webServer = new QWebSocketServer("testWebServer",
                                     ssl ? QWebSocketServer::SecureMode
                                         : QWebSocketServer::NonSecureMode,
                                     this);
    if (ssl)
        webServer->setSslConfiguration(*ssl);
    QObject::connect(webServer, &QWebSocketServer::newConnection, this,
                     &ChatServer::MyselfNewConnectCallBackSlot);
    if (ssl) {
        QObject::connect(webServer, &QWebSocketServer::sslErrors, this,
                         [this](const QList<QSslError> &errors) {
                             if (this->verbose)
                                 for (const auto &e : errors)
                                     qWarning("ssl error: %s", qPrintable(e.errorString()));
                         });
    }
    webServer->listen(host, port);
}

void ChatServer::MyselfNewConnectCallBackSlot()
{ // new-connection callback
    // The article takes one pending connection per signal; take them all so a
    // burst of handshakes is not left waiting for the next signal.
    while (webServer->hasPendingConnections()) {
        QWebSocket *websocket = webServer->nextPendingConnection();
        // Added: `?name=` wins over origin(); kept as the objectName().
        const QUrlQuery query(websocket->requestUrl());
        const QString byQuery = query.queryItemValue("name", QUrl::FullyDecoded);
        websocket->setObjectName(query.hasQueryItem("name") ? byQuery : websocket->origin());
        if (verbose)
            qInfo("%s connected", qPrintable(nameOf(websocket)));
        sockets << websocket;

        // Departure
        QObject::connect(websocket, &QWebSocket::disconnected, this, [websocket, this]() {
            if (verbose)
                qInfo("%s disconnected", qPrintable(nameOf(websocket)));
            sockets.removeOne(websocket);
            for (auto it = rooms.begin(); it != rooms.end();) { // added: rooms
                it->remove(websocket);
                it = it->isEmpty() ? rooms.erase(it) : std::next(it);
            }
            websocket->deleteLater();
        });

        // Message callback
        QObject::connect(websocket, &QWebSocket::textMessageReceived, this,
                         [this](const QString &msg) {
                             QWebSocket *websocket = qobject_cast<QWebSocket *>(sender());
                             onText(websocket, msg);
                         });

        // Added: binary frames go to the server, like plain text.
        QObject::connect(websocket, &QWebSocket::binaryMessageReceived, this,
                         [this](const QByteArray &) { ++toServer; });

        QObject::connect(websocket,
                         QOverload<QAbstractSocket::SocketError>::of(&QWebSocket::error), this,
                         [this](QAbstractSocket::SocketError) {
                             QWebSocket *web = qobject_cast<QWebSocket *>(sender());
                             if (verbose && web)
                                 qInfo("%s error %s", qPrintable(nameOf(web)),
                                       qPrintable(web->errorString()));
                         });
    }
}

void ChatServer::onText(QWebSocket *websocket, const QString &msg)
{
    QJsonDocument doc = QJsonDocument::fromJson(msg.toUtf8());
    if (doc.isNull() || !doc.isObject()) {
        // The article: shown in the text box as a message to the server.
        ++toServer;
        return;
    }
    QJsonObject obj = doc.object();
    const QJsonValue id = obj.value("id");

    // Added: rooms and list.
    const QString type = obj.value("type").toString();
    if (type == "join" || type == "leave") {
        const QJsonValue room = obj.value("room");
        const QString r = room.toString();
        if (!room.isString() || r.size() < 2 || !r.startsWith('#')) {
            notice(websocket, "error",
                   "invalid room: \"room\" must be a string such as \"#lobby\"", id);
        } else if (type == "join") {
            rooms[r].insert(websocket);
        } else {
            auto it = rooms.find(r);
            if (it != rooms.end()) {
                it->remove(websocket);
                if (it->isEmpty())
                    rooms.erase(it);
            }
        }
        return;
    }
    if (type == "list") {
        QStringList names;
        for (auto &socket : sockets)
            names << nameOf(socket);
        notice(websocket, "list", QString("%1 connected").arg(names.size()), id, &names);
        return;
    }

    // Private message between clients (the article), room message (added).
    const QJsonValue dstValue = obj.value("dst");
    const QString dst = dstValue.toString();
    if (!dstValue.isString() || dst.isEmpty() || dst.startsWith('@')) {
        ++toServer;
        return;
    }
    obj["src"] = nameOf(websocket); // added: the receiver learns the real sender
    const QString out = QString::fromUtf8(QJsonDocument(obj).toJson(QJsonDocument::Compact));

    if (dst.startsWith('#')) {
        auto it = rooms.constFind(dst);
        if (it == rooms.constEnd() || !it->contains(websocket)) {
            notice(websocket, "error", "not a member of " + dst, id);
            return;
        }
        for (QWebSocket *member : *it)
            if (member != websocket)
                member->sendTextMessage(out);
        return;
    }

    bool delivered = false;
    for (auto &socket : sockets) {
        if (dst == nameOf(socket)) {
            socket->sendTextMessage(out);
            delivered = true;
        }
    }
    if (!delivered) // added: no silent drop
        notice(websocket, "error", "recipient not connected: " + dst, id);
}

void ChatServer::notice(QWebSocket *to, const QString &type, const QString &msg,
                        const QJsonValue &ref, const QStringList *names)
{
    QJsonObject obj;
    obj["src"] = "@gateway";
    obj["dst"] = nameOf(to);
    obj["type"] = type;
    obj["msg"] = msg;
    if (!ref.isUndefined())
        obj["ref"] = ref;
    if (names)
        obj["names"] = QJsonArray::fromStringList(*names);
    to->sendTextMessage(QString::fromUtf8(QJsonDocument(obj).toJson(QJsonDocument::Compact)));
}

ChatServer::~ChatServer()
{
    for (auto socket : sockets)
        socket->close();
    webServer->close();
}
